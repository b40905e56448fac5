"""The scan's header cache: a second scan of an unchanged folder reads no header; any change is seen."""

import os
import shutil
import time

import pytest
from PIL import Image

from dfk.data import scan as scan_module
from dfk.data.scan import HeaderCache, scan


def _age(root, seconds=100):
    """Every file modified ``seconds`` ago: old enough to be cached (newer ones are read again)."""
    past = time.time_ns() - seconds * 10**9
    for p in root.rglob("*"):
        os.utime(p, ns=(past, past))


@pytest.fixture
def folder(tiny_data, tmp_path):
    root = tmp_path / "data"
    for split in ("Train", "Validation", "Test"):
        shutil.copytree(tiny_data / split, root / split)
    _age(root)
    return root


@pytest.fixture
def reads(monkeypatch):
    """The files whose header is read."""
    seen = []
    real = scan_module.probe
    monkeypatch.setattr(scan_module, "probe", lambda path: (seen.append(os.path.basename(path)), real(path))[1])
    return seen


def _same(a, b):
    return (a.samples, a.info, a.bad_files, a.fingerprint, a.ignored_files) == \
           (b.samples, b.info, b.bad_files, b.fingerprint, b.ignored_files)


def test_a_second_scan_of_an_unchanged_folder_reads_no_header(folder, reads):
    first = scan(folder)
    n = sum(len(v) for v in first.samples.values())
    assert len(reads) == n and first.headers_cached == 0
    reads.clear()
    second = scan(folder)
    assert reads == [] and second.headers_cached == n
    assert _same(first, second)
    assert list((scan_module.HeaderCache(folder).path.parent).glob("*.json"))  # in dfk's cache folder (DFK_CACHE)


def _set_time(path, seconds_ago):
    os.utime(path, ns=(time.time_ns() - seconds_ago * 10**9,) * 2)


def test_every_change_is_seen_and_only_changed_files_are_read_again(folder, reads):
    before = scan(folder)
    fake = folder / "Train" / "Fake"
    changed, removed, touched = sorted(fake.glob("*.jpg"))[:3]
    Image.new("RGB", (40, 20), "red").save(changed)  # rewritten: another picture, another size
    removed.unlink()
    shutil.copyfile(sorted((folder / "Test" / "Real").glob("*.jpg"))[0], fake / "new.jpg")
    (fake / "broken.jpg").write_bytes(b"not an image")
    for p in (changed, fake / "new.jpg", fake / "broken.jpg"):
        _set_time(p, 50)
    _set_time(touched, 40)  # same bytes, a new modification time: read again (a stat cannot tell more)
    reads.clear()
    after = scan(folder)
    assert sorted(reads) == sorted([changed.name, "new.jpg", "broken.jpg", touched.name])
    assert after.headers_cached == sum(len(v) for v in before.samples.values()) - 3  # all but changed, removed, touched
    assert after.info[str(changed)].width == 40 and str(removed) not in after.info
    assert str(fake / "new.jpg") in after.info and [os.path.basename(p) for p, _ in after.bad_files] == ["broken.jpg"]
    assert after.info[str(touched)] == before.info[str(touched)]
    assert after.fingerprint != before.fingerprint

    reads.clear()
    (fake / "broken.jpg").unlink()
    shutil.copyfile(changed, fake / "broken.jpg")  # a bad file made good (a new inode too)
    _set_time(fake / "broken.jpg", 10)
    again = scan(folder)
    assert reads == ["broken.jpg"] and again.bad_files == [] and str(fake / "broken.jpg") in again.info


def test_files_written_just_now_are_read_again_next_time(folder, reads):
    """File times can be as coarse as a kernel tick: a file changed right after its header was read
    could look unchanged, so files younger than two seconds are never taken from the cache."""
    fresh = folder / "Train" / "Real" / "fresh.jpg"
    shutil.copyfile(sorted((folder / "Train" / "Real").glob("*.jpg"))[0], fresh)
    scan(folder)
    reads.clear()
    scan(folder)
    assert reads == ["fresh.jpg"]


def test_a_cache_that_cannot_be_read_or_written_only_costs_time(folder, reads, tmp_path, monkeypatch):
    first = scan(folder)
    cache = HeaderCache(folder).path
    cache.write_text("{not json")
    reads.clear()
    assert _same(scan(folder), first) and len(reads) == sum(len(v) for v in first.samples.values())
    reads.clear()
    assert _same(scan(folder), first) and reads == []  # the cache was written again
    cache.write_text(cache.read_text().replace('"key":[1,', '"key":[0,'))  # from another version of dfk's checks
    reads.clear()
    assert _same(scan(folder), first) and len(reads) == sum(len(v) for v in first.samples.values())
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("DFK_CACHE", str(blocked))
    reads.clear()
    assert _same(scan(folder), first) and len(reads) == sum(len(v) for v in first.samples.values())


def test_two_folders_do_not_share_entries(folder, tmp_path, reads):
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    _age(other)
    scan(folder)
    reads.clear()
    index = scan(other)
    assert len(reads) == sum(len(v) for v in index.samples.values()) and index.headers_cached == 0
