"""Progress of long work, one rule for every loop (train, finetune, linprobe, bench): a tqdm
bar when the stream it writes to is a terminal; otherwise (CI, nohup, torchrun's log files)
no bar, whose carriage-return updates would pile up into one endless line, but one plain
line each time the loop reports its figures."""
import sys

from tqdm import tqdm


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


class Progress:
    """`update()` each unit of work, `report(**figures)` at each logging interval."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, unit: str = "step",
                 enabled: bool = True, stream=None, write=None):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.unit, self.n, self.enabled = total, desc, unit, initial, enabled
        self.write = write if write is not None else self._print
        self.bar = None
        if enabled and is_terminal(self.stream):
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                            dynamic_ncols=True, mininterval=1.0)

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def report(self, **figures) -> None:
        """The bar's postfix on a terminal, else one line: `desc: unit n/total, key value, ...`."""
        if self.bar is not None:
            self.bar.set_postfix(**figures)
        elif self.enabled:
            parts = "".join(f", {k} {v}" for k, v in figures.items())
            self.write(f"{self.desc}: {self.unit} {self.n}/{self.total}{parts}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
