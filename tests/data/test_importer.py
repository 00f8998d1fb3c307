from __future__ import annotations

import functools
import http.server
import json
import threading

import pytest

from nanoxtal.data import DatasetError, import_dataset, verify
from nanoxtal.data.importer import RECEIPT_NAME, mirror_url


def leftovers(dest):
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def test_import_copies_verified_files_and_writes_a_receipt(tmp_path, data_root):
    root, found = data_root
    dest = tmp_path / "resources"
    target = import_dataset(found["alpha"], root, dest, progress=False)
    assert target == dest / "alpha"
    assert (target / "sub" / "b.bin").read_bytes() == bytes(range(256))
    verify(found["alpha"], dest)  # the copy itself passes the checksum check
    receipt = json.loads((target / RECEIPT_NAME).read_text())
    assert receipt["dataset"] == "alpha" and receipt["files"] == 2 and receipt["sha256_verified"]
    assert leftovers(dest) == ["alpha"]


def test_corrupt_source_is_refused_and_nothing_is_left(tmp_path, data_root):
    root, found = data_root
    (root / "alpha" / "sub" / "b.bin").write_bytes(b"truncated")
    dest = tmp_path / "resources"
    with pytest.raises(DatasetError, match=r"corrupt"):
        import_dataset(found["alpha"], root, dest, progress=False)
    assert leftovers(dest) == []


def test_missing_source_without_mirror_says_where_to_get_it(tmp_path, data_root):
    root, found = data_root
    (root / "beta" / "c.csv").unlink()
    with pytest.raises(DatasetError, match=r"c\.csv is missing.*https://example.org/beta"):
        import_dataset(found["beta"], root, tmp_path / "resources", progress=False)
    assert leftovers(tmp_path / "resources") == []


def test_failed_reimport_keeps_the_previous_good_copy(tmp_path, data_root):
    root, found = data_root
    dest = tmp_path / "resources"
    import_dataset(found["beta"], root, dest, progress=False)
    (root / "beta" / "c.csv").write_bytes(b"changed")
    with pytest.raises(DatasetError):
        import_dataset(found["beta"], root, dest, progress=False)
    assert (dest / "beta" / "c.csv").read_bytes() == b"x,y\n1,2\n"
    assert leftovers(dest) == ["beta"]


def test_reimport_replaces_the_previous_copy(tmp_path, data_root):
    root, found = data_root
    dest = tmp_path / "resources"
    import_dataset(found["beta"], root, dest, progress=False)
    (dest / "beta" / "stray.txt").write_text("not part of the dataset")
    import_dataset(found["beta"], root, dest, progress=False)
    assert sorted(p.name for p in (dest / "beta").iterdir()) == [RECEIPT_NAME, "c.csv"]
    assert leftovers(dest) == ["beta"]


def test_missing_files_are_downloaded_from_a_folder_or_file_url_mirror(tmp_path, data_root):
    mirror, found = data_root
    empty_root = tmp_path / "empty"
    for form in (str(mirror), mirror.as_uri()):
        dest = tmp_path / f"res-{len(form)}"
        target = import_dataset(found["alpha"], empty_root, dest, mirror=form, progress=False)
        assert (target / "a.txt").read_text() == "alpha\n"
        assert json.loads((target / RECEIPT_NAME).read_text())["mirror"] == form


def test_download_over_http_is_verified(tmp_path, data_root):
    mirror, found = data_root
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        target = import_dataset(
            found["alpha"], tmp_path / "empty", tmp_path / "r1", mirror=url, progress=False
        )
        assert (target / "sub" / "b.bin").read_bytes() == bytes(range(256))
        (mirror / "beta" / "c.csv").write_bytes(b"tampered")
        with pytest.raises(DatasetError, match=r"http://127\.0\.0\.1.*corrupt"):
            import_dataset(
                found["beta"], tmp_path / "empty", tmp_path / "r2", mirror=url, progress=False
            )
        (mirror / "beta" / "c.csv").unlink()
        with pytest.raises(DatasetError, match=r"downloading .*c\.csv failed"):
            import_dataset(
                found["beta"], tmp_path / "empty", tmp_path / "r3", mirror=url, progress=False
            )
    finally:
        server.shutdown()
    assert leftovers(tmp_path / "r2") == [] and leftovers(tmp_path / "r3") == []


def test_mirror_url_quotes_paths(data_root):
    _, found = data_root
    entry = found["alpha"].files[0]
    assert (
        mirror_url("https://m.org/data/", found["alpha"], entry) == "https://m.org/data/alpha/a.txt"
    )
