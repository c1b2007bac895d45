"""One progress rule for every loop: a bar on a terminal, plain lines elsewhere."""
import io

from fastmae.progress import Progress, is_terminal


class _Tty(io.StringIO):
    def isatty(self):
        return True


class _Closed(io.StringIO):
    def isatty(self):
        raise ValueError("I/O operation on closed file")


def test_not_a_terminal_gives_one_plain_line_per_report():
    stream = io.StringIO()
    with Progress(5, "fine-tune", unit="epoch", stream=stream) as p:
        for epoch in range(5):
            p.update()
            if epoch % 2 == 1:
                p.report(loss="0.512", acc1="71.0")
    text = stream.getvalue()
    assert "\r" not in text
    assert text.splitlines() == ["fine-tune: epoch 2/5, loss 0.512, acc1 71.0",
                                 "fine-tune: epoch 4/5, loss 0.512, acc1 71.0"]


def test_lines_go_to_the_given_writer_and_count_from_initial():
    lines = []
    p = Progress(10, "train", initial=6, stream=io.StringIO(), write=lines.append)
    p.update(2)
    p.report(loss="1.0000")
    assert lines == ["train: step 8/10, loss 1.0000"]


def test_a_terminal_gets_a_bar_and_no_plain_lines():
    stream, lines = _Tty(), []
    with Progress(4, "train", stream=stream, write=lines.append) as p:
        for _ in range(4):
            p.update()
        p.report(loss="0.2500")
    assert lines == []
    assert "\r" in stream.getvalue() and "4/4" in stream.getvalue() and "loss=0.2500" in stream.getvalue()


def test_disabled_progress_prints_nothing():
    stream, lines = io.StringIO(), []
    p = Progress(3, "linear probe", enabled=False, stream=stream, write=lines.append)
    p.update()
    p.report(loss="1")
    p.close()
    assert lines == [] and stream.getvalue() == ""


def test_is_terminal():
    assert is_terminal(_Tty()) and not is_terminal(io.StringIO())
    assert not is_terminal(_Closed()) and not is_terminal(object())
