"""What a person sees of a run: a progress bar (one plain line per logged step when not on
a terminal), metrics.jsonl (one JSON object per logged step), TensorBoard scalars when
tensorboard is installed, reconstruction pictures, the loss curve and a closing summary.
Only rank 0 reports."""
import json
import math
from pathlib import Path

import torch
import yaml

from .. import pictures
from ..progress import Progress
from ..perf.flops import train_flops_per_image
from ..perf.peaks import spec_peak_tflops

METRICS = "metrics.jsonl"
PICTURE_IMAGES = 8


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


class Reporter:
    def __init__(self, out: Path, cfg, model, dist, device, precision, total_steps, log):
        self.out, self.cfg, self.model, self.device = out, cfg, model, device
        self.main, self.log, self.total_steps, self.precision = dist.is_main, log, total_steps, precision
        self.history: list[dict] = []
        self.picture_imgs = None
        self.img_per_s = 0.0
        self.bar = self.tb = None
        self._window_start = (0, 0.0)  # (images seen, seconds) at the last log line
        self.flops_per_img = train_flops_per_image(model.config, cfg.mask_ratio)
        self.peak = spec_peak_tflops(torch.cuda.get_device_name(device), precision) \
            if device.type == "cuda" else None

    def start(self, step: int, base_lr: float, eff_batch: int, backends: dict) -> None:
        if not self.main:
            return
        self._trim_metrics(step)
        # The resolved settings, in the format --config reads back.
        (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        b = backends
        self.log(f"fastmae train: {self.cfg.model} at {self.cfg.img_size}px on {self.device} "
                 f"({self.precision}), loader {b['loader']}, ops {b['kernels']}, attention {b['attn']} "
                 f"(decoder {b['decoder_attn']}), compile {b.get('compile', 'off')}; "
                 f"effective batch {eff_batch}, lr {base_lr:.3g}, {self.total_steps} steps")
        self.tb = _tensorboard(self.out)
        self.bar = Progress(self.total_steps, "train", initial=step, write=self.log)

    def _trim_metrics(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint: they will be logged again."""
        path = self.out / METRICS
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.history = [json.loads(line) for line in kept]
        path.write_text("".join(line + "\n" for line in kept))

    def keep_pictures(self, imgs: torch.Tensor) -> None:
        # A copy on the device: moving it to the host here would sync inside a step.
        if self.main and self.picture_imgs is None:
            self.picture_imgs = imgs[:PICTURE_IMAGES].detach().float().clone()

    def log_due(self, step: int) -> bool:
        """Whether `step` is logged (on every rank: the loop reads the step's flags then)."""
        return step % self.cfg.log_every == 0 or step == self.total_steps

    def step(self, step, epoch, loss, lr, imgs_seen, seconds, skipped: bool) -> None:
        if not self.main:
            return
        self.bar.update(1)
        if not self.log_due(step):
            return
        seen0, t0 = self._window_start
        rate = (imgs_seen - seen0) / max(seconds - t0, 1e-9)
        self._window_start = (imgs_seen, seconds)
        row = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "img_per_s": rate,
               "skipped_step": skipped}
        self.history.append(row)
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key in ("loss", "lr", "img_per_s"):
                self.tb.add_scalar(f"train/{key}", row[key], step)
        self.bar.report(epoch=epoch, loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")

    def epoch_end(self, epoch: int) -> None:
        every = self.cfg.picture_every
        if self.main and every and (epoch + 1) % every == 0:
            self.reconstructions(f"reconstructions-epoch{epoch + 1:03d}.png")

    def reconstructions(self, name: str) -> Path | None:
        if self.picture_imgs is None:
            return None
        return pictures.save_reconstructions(self.model, self.picture_imgs, self.out / name,
                                             mask_ratio=self.cfg.mask_ratio, seed=self.cfg.seed)

    def finish(self, step, loss, imgs_seen, seconds, ckpt_path, interrupted: bool) -> None:
        if not self.main:
            return
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.img_per_s = imgs_seen / max(seconds, 1e-9)
        outputs = [ckpt_path, self.out / METRICS]
        if not interrupted:
            outputs.append(self.reconstructions("reconstructions.png"))
            if self.history:
                xs = [row["step"] for row in self.history]
                ys = [row["loss"] for row in self.history]
                outputs.append(pictures.save_curves({"train loss": (xs, ys)}, self.out / "loss_curve.png",
                                                    xlabel="step", ylabel="loss", title=self.cfg.model))
        mfu = ""
        if self.peak:
            mfu = f", MFU {self.img_per_s * self.flops_per_img / (self.peak * 1e12):.1%} of " \
                  f"{self.peak:.0f} TFLOP/s"
        state = "interrupted; checkpoint saved" if interrupted else "done"
        loss_text = f"{loss:.4f}" if math.isfinite(loss) else "n/a"
        self.log(f"{state}: {step} steps, final loss {loss_text}, {self.img_per_s:.1f} img/s{mfu}")
        self.log("outputs: " + ", ".join(str(p) for p in outputs if p is not None))
