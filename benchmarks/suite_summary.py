"""The Python half of benchmarks/device_suite.sh.

  suite_summary.py facts --doctor OUT/doctor.json
      KEY=0|1 lines for the shell (GPU, HF, DALI, MPL), read from the doctor report, or
      found by importing when the report is missing or unreadable.
  suite_summary.py write --steps STEPS.tsv --out OUT [--smoke 1] [--budget S] [--started T]
      OUT/summary.json: the device, the versions, every step's status (ok / FAILED /
      SKIPPED with the reason), the headline ratios and the whole doctor report. It is
      the file to commit under benchmarks/results/ as it is.

Reads only the files the suite wrote; imports nothing from fastmae (and no torch unless
the doctor report is missing), so it runs when everything else has failed."""
import argparse
import datetime
import json
import os
import sys

STATUSES = ("ok", "FAILED", "SKIPPED")
# The device tool returns at most this many files from $OUT.
MAX_FILES = 8
# bench JSON files the suite may write, in the order the summary lists them.
BENCHES = {"bench-b16": "ViT-B/16 headline", "bench-b16-compiled": "ViT-B/16 compiled", "bench-l16": "ViT-L/16", "max-batch": "largest batch",
           "bench-cpu": "CPU check of the same command"}


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- facts

def _imports(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:
        return False


def facts(doctor_path: str) -> dict:
    rep = _read_json(doctor_path)
    try:
        imports = rep["imports"]
        return {"GPU": bool(rep["gpu"]["available"]), "HF": bool(imports["transformers"]["ok"]),
                "DALI": bool(imports["nvidia-dali"]["ok"]), "MPL": bool(imports["matplotlib"]["ok"]),
                "DOCTOR": True}
    except (TypeError, KeyError):
        pass
    gpu = False
    try:
        import torch
        gpu = torch.cuda.is_available()
    except Exception:
        pass
    return {"GPU": gpu, "HF": _imports("transformers"), "DALI": _imports("nvidia.dali"),
            "MPL": _imports("matplotlib"), "DOCTOR": False}


# ---------------------------------------------------------------- summary

def read_steps(path: str) -> list[dict]:
    """The suite's step records: name, status, seconds, limit, reason, command (tab-separated)."""
    steps = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 6 or parts[1] not in STATUSES:
                continue
            name, status, seconds, limit, reason, command = parts[:6]
            steps.append({"name": name, "status": status,
                          "seconds": int(seconds) if seconds.isdigit() else None,
                          "limit_s": int(limit) if limit.isdigit() else None,
                          "reason": reason or None, "command": command or None})
    return steps


def bench_figures(res: dict) -> dict:
    """The ratios and figures of one `fastmae bench --json` result."""
    cfg = res.get("config", {})
    rows = {r["name"]: r for r in res.get("results", [])}
    ips = {n: r.get("img_per_s") for n, r in rows.items()}
    out = {"device": res.get("device"), "model": cfg.get("model"), "img_size": cfg.get("img_size"),
           "batch_size": cfg.get("batch_size"), "precision": cfg.get("precision"),
           "command": res.get("command"), "img_per_s": ips,
           "peak_mem_mb": {n: r.get("peak_mem_mb") for n, r in rows.items()},
           "mfu": {n: r.get("mfu") for n, r in rows.items()},
           "attn_backend": rows.get("fastmae", {}).get("attn_backend"),
           "kernels": rows.get("fastmae", {}).get("kernels")}
    for other in ("reference", "hf"):
        a, b = ips.get("fastmae"), ips.get(other)
        out[f"fastmae_vs_{other}"] = round(a / b, 3) if a and b else None
    if any("max_batch" in r for r in rows.values()):
        out["max_batch"] = {n: r.get("max_batch") for n, r in rows.items()}
        out["max_batch_first_failure"] = {n: r.get("max_batch_first_oom") for n, r in rows.items()}
    return out


def summary(steps: list[dict], out_dir: str, doctor: dict | None, smoke: bool, budget_s: int | None,
            started: int | None) -> dict:
    gpu = (doctor or {}).get("gpu") or {}
    devices = gpu.get("devices") or []
    benches = {}
    for name in BENCHES:
        res = _read_json(os.path.join(out_dir, f"{name}.json"))
        if res is not None:
            benches[name] = bench_figures(res)
    # The GPU's name; without one the CPU as the bench named it (none ran: just "CPU").
    device = devices[0]["name"] if devices else next(
        (b["device"] for b in benches.values() if b.get("device")), "CPU")
    head_name = "bench-b16" if "bench-b16" in benches else ("bench-cpu" if "bench-cpu" in benches else None)
    if head_name:
        headline = {"from": f"{head_name}.json", "what": BENCHES[head_name], **benches[head_name]}
    else:
        step = next((s for s in steps if s["name"] in ("bench-b16", "bench-cpu")), None)
        headline = {"from": None, "why": f"{step['name']} {step['status']}: {step['reason']}" if step
                    else "no headline step ran"}
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "suite": "benchmarks/device_suite.sh",
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "smoke": smoke,
        "budget_s": budget_s,
        "wall_s": int(now.timestamp()) - started if started else None,
        "device": device,
        "gpu": gpu or None,
        "versions": (doctor or {}).get("versions"),
        "missing": (doctor or {}).get("missing"),
        "auto": (doctor or {}).get("auto"),
        "failed": [s["name"] for s in steps if s["status"] == "FAILED"],
        "skipped": {s["name"]: s["reason"] for s in steps if s["status"] == "SKIPPED"},
        "steps": steps,
        "headline": headline,
        "benches": benches,
        "files": sorted(os.listdir(out_dir)),
        "doctor": doctor if doctor is not None else "doctor.json missing or unreadable (see log.txt)",
    }


def write(args) -> int:
    steps = read_steps(args.steps)
    doctor_path = os.path.join(args.out, "doctor.json")
    doctor = _read_json(doctor_path)
    files = set(os.listdir(args.out)) | {"summary.json"}
    fold = doctor is not None and len(files) > args.max_files and "doctor.json" in files
    if fold:  # summary.json carries the whole report: drop the separate copy to stay within the limit
        os.remove(doctor_path)
    res = summary(steps, args.out, doctor, args.smoke == "1", args.budget, args.started)
    res["files"] = sorted(set(os.listdir(args.out)) | {"summary.json"})
    if fold:
        res["doctor_json_folded"] = f"doctor.json removed: more than {args.max_files} files under OUT"
    tmp = os.path.join(args.out, ".summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    os.replace(tmp, os.path.join(args.out, "summary.json"))
    h = res["headline"]
    if h.get("from"):
        ratios = ", ".join(f"{k} {h[k]}x" for k in ("fastmae_vs_reference", "fastmae_vs_hf")
                           if h.get(k) is not None)
        print(f"headline ({h['from']}, {h['device']}): {ratios or 'no ratios'}; "
              f"img/s {json.dumps(h['img_per_s'])}")
    else:
        print(f"headline: none ({h['why']})")
    print(f"summary.json: {len(res['failed'])} failed, {len(res['skipped'])} skipped, "
          f"{sum(s['status'] == 'ok' for s in steps)} ok")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("facts")
    f.add_argument("--doctor", required=True)
    w = sub.add_parser("write")
    w.add_argument("--steps", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--smoke", default="0")
    w.add_argument("--budget", type=int, default=None)
    w.add_argument("--started", type=int, default=None)
    w.add_argument("--max-files", type=int, default=MAX_FILES)
    args = p.parse_args(argv)
    if args.cmd == "facts":
        for key, value in facts(args.doctor).items():
            print(f"{key}={int(value)}")
        return 0
    return write(args)


if __name__ == "__main__":
    sys.exit(main())
