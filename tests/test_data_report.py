"""fastmae data check --report: planted duplicates of real photos are found (every exact
copy, >= 95% of the near ones, no false group), the HTML is self-contained and escapes a
hostile file name, the JSON has its fields, --dedupe keeps one file per group, and the
near-duplicate index finds exactly the pairs a brute-force comparison finds."""
import hashlib
import itertools
import json
import random
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastmae.cli import main
from fastmae.data import phash as ph
from fastmae.data.report import ReportSettings, analyse, write_report
from tests.planted import IMAGENET_SAMPLE, plant, sample_photos, score

needs_photos = pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir() or len(sample_photos()) < 60,
                                  reason=f"the shared ImageNet sample ({IMAGENET_SAMPLE}) is not here")
HOSTILE = "<img src=x onerror=alert(1)>.jpg"


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        for k in ("src", "href"):
            if a.get(k) and not a[k].startswith(("data:", "#")):
                self.external.append(a[k])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    if not IMAGENET_SAMPLE.is_dir() or len(sample_photos()) < 60:
        pytest.skip(f"the shared ImageNet sample ({IMAGENET_SAMPLE}) is not here")
    root = tmp_path_factory.mktemp("planted")
    truth = plant(sample_photos(60), root / "photos", exact=10, near=30, seed=0)
    blank = root / "photos" / "planted"
    Image.new("RGB", (80, 60), (128, 128, 128)).save(blank / "blank_gray.png")
    noise = np.random.default_rng(0).integers(0, 3, (60, 80, 3), dtype=np.uint8)  # lens cap
    Image.fromarray(noise).save(blank / "lens_cap.png")
    (blank / "truncated.jpg").write_bytes(Path(truth["exact"][0][1]).read_bytes()[:3000])
    shutil.copyfile(truth["exact"][1][1], blank / HOSTILE)  # an exact copy: shown with a thumbnail
    truth["exact"].append((str(blank / HOSTILE), truth["exact"][1][1]))
    truth["origin"][str(blank / HOSTILE)] = truth["origin"][truth["exact"][1][1]]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "photos").rglob("*")
              if p.is_file()}
    a = analyse(str(root / "photos"), ReportSettings(), workers=2)
    return root, truth, a, before


@needs_photos
def test_planted_duplicates_found_without_false_groups(planted):
    _, truth, a, _ = planted
    s = score(a.content, truth)
    assert s["exact_found"] == s["exact_planted"] == 11
    assert s["near_found"] >= 0.95 * s["near_planted"], s
    assert s["false_groups"] == 0, s
    blanks = {Path(b["path"]).name for b in a.content["near_uniform"]}
    assert blanks == {"blank_gray.png", "lens_cap.png"}
    assert [Path(b["path"]).name for b in a.content["bad"]] == ["truncated.jpg"]


@needs_photos
def test_json_fields_and_counts(planted):
    _, truth, a, _ = planted
    c = json.loads(json.dumps(a.content))
    for key in ("files", "good", "bad", "counts", "formats", "modes", "colour", "sizes", "exact_duplicates",
                "near_duplicates", "near_uniform", "dedupe", "settings", "seconds"):
        assert key in c, key
    # ImageFolder layout: two "classes", the originals and the planted copies
    n_planted = len(truth["exact"]) + len(truth["near"]) + 3  # + blank, lens cap, truncated(bad)
    assert c["counts"]["by"] == "class"
    assert c["counts"]["images"] == {"originals": 60, "planted": n_planted - 1}
    assert c["counts"]["imbalance_ratio"] == pytest.approx(60 / (n_planted - 1))
    assert c["files"] == 60 + n_planted and c["good"] == c["files"] - 1
    assert sum(c["formats"].values()) == c["good"] and set(c["formats"]) == {"JPEG", "PNG"}
    assert sum(c["colour"].values()) == c["good"]
    assert sum(b["count"] for b in c["sizes"]["aspect_ratio_histogram"]) == c["good"]
    assert sum(b["count"] for b in c["sizes"]["short_side_histogram"]) == c["good"]


@needs_photos
def test_html_is_self_contained_and_escapes_names(planted, tmp_path):
    _, _, a, _ = planted
    j, h = write_report(a.content, tmp_path)
    text = h.read_text()
    page = _Page()
    page.feed(text)
    page.close()
    assert page.external == []                       # nothing from the network, no local links
    shown = [i for i in page.imgs if i.get("src")]
    assert len(shown) >= 11 + 2                      # duplicates' and blanks' thumbnails
    assert all(i["src"].startswith("data:image/jpeg;base64,") for i in shown)
    assert not any(i.get("src") == "x" for i in page.imgs)
    assert "onerror" not in {k for i in page.imgs for k in i}
    assert "<img src=x" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in text
    assert json.loads(j.read_text())["files"] == a.content["files"]


@needs_photos
def test_cli_dedupe_keeps_one_per_group_and_touches_nothing(planted, tmp_path, capsys):
    root, truth, a, before = planted
    out = tmp_path / "clean.txt"
    rc = main(["data", "check", str(root / "photos"), "--report", str(tmp_path), "--out", str(out),
               "--dedupe", "--workers", "2"])
    assert rc == 1  # one unusable file
    text = capsys.readouterr().out
    d = a.content["dedupe"]
    assert f"dropped {d['drop']} duplicates" in text
    kept = [ln.split("\t")[0] for ln in out.read_text().splitlines()]
    assert len(kept) == a.content["good"] - d["drop"]
    # one file per photo among the duplicated ones: no planted copy survives beside its original
    origin = truth["origin"]
    found = {c for c, _ in truth["exact"]} | {c for g in a.content["near_duplicates"] for f in g["files"]
                                               for c in [f["path"]] + f["exact_copies"]}
    per_photo = {}
    for p in kept:
        if p in found:
            per_photo.setdefault(origin[p], []).append(p)
    assert all(len(v) == 1 for v in per_photo.values()), per_photo
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "photos").rglob("*") if p.is_file()}
    assert after == before
    assert (tmp_path / "data_report.html").is_file()
    # an existing report is not replaced without --force
    assert main(["data", "check", str(root / "photos"), "--report", str(tmp_path)]) == 2


def test_near_pairs_match_brute_force():
    rng = random.Random(1234)
    for radius in (0, 3, 8, 13):
        base = [rng.getrandbits(64) for _ in range(300)]
        hs = base + [b ^ sum(1 << i for i in rng.sample(range(64), rng.randint(0, radius + 3)))
                     for b in base[:150]]
        brute = sorted((i, j, ph.hamming(hs[i], hs[j])) for i, j in itertools.combinations(range(len(hs)), 2)
                       if ph.hamming(hs[i], hs[j]) <= radius)
        assert ph.near_pairs(hs, radius) == brute
    with pytest.raises(ValueError):
        ph.near_pairs([1, 2], 20)


def test_phash_matches_a_reference_dct():
    scipy_fft = pytest.importorskip("scipy.fft")
    img = Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    g = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = scipy_fft.dctn(g, type=2, norm="ortho")[:8, :8]
    bits = (low > np.median(low)).ravel()
    assert ph.phash(img) == int("".join("1" if b else "0" for b in bits), 2)
    assert ph.groups(5, [(0, 3), (3, 4)]) == [[0, 3, 4]]


def test_report_flags_need_their_partners(tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(d / "a.png")
    assert main(["data", "check", str(d), "--dedupe"]) == 2
    assert "--dedupe needs --out" in capsys.readouterr().err
    assert main(["data", "check", str(d), "--report", str(tmp_path), "--radius", "40"]) == 2
