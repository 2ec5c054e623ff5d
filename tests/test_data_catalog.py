"""tfrecsys-data: downloads from a local HTTP server (this machine has no internet) with the cards' real
checksums, archives unpacked, and every failure named: a changed file, an unreachable host, a login-only
dataset, an archive that would write outside its directory."""

import contextlib
import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import zipfile

import pytest

from tests.test_data_readers import dataset
from tfrecsys.data import catalog
from tfrecsys.data.readers import amazon

BIN = os.path.dirname(sys.executable)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(directory: str):
    """An HTTP server on 127.0.0.1 (a free port) serving ``directory``; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=directory))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_download_checks_the_real_cards_checksums_over_http(tmp_path):
    """The amazon-beauty card pins the S3-Rec files by SHA-256; served unchanged, they download, verify and
    read; changed by one byte, the download fails naming the URL and both checksums and leaves nothing."""
    with serving(dataset("amazon-beauty-s3rec")) as url:
        files = catalog.download("amazon-beauty", str(tmp_path / "good"), mirror=url)
    assert [os.path.basename(f) for f in files] == ["Beauty.txt", "Beauty_item2attributes.json"]
    assert amazon.read_amazon_beauty(str(tmp_path / "good")).num_users == 22_363

    changed = tmp_path / "changed"
    changed.mkdir()
    for name in ("Beauty.txt", "Beauty_item2attributes.json"):
        shutil.copy(os.path.join(dataset("amazon-beauty-s3rec"), name), changed / name)
    text = (changed / "Beauty.txt").read_bytes()
    (changed / "Beauty.txt").write_bytes(text.replace(b"1 1 2 3", b"1 1 2 4", 1))
    with serving(str(changed)) as url:
        with pytest.raises(catalog.DownloadError, match=r"Beauty\.txt: sha256 [0-9a-f]{64} does not match the "
                                                        r"card's 226cce9c.*Download it by hand from https://github"):
            catalog.download("amazon-beauty", str(tmp_path / "bad"), mirror=url)
    assert os.listdir(tmp_path / "bad") == []


def test_unreachable_host_says_how_to_get_the_data_by_hand(tmp_path, unused_port):
    message = (rf"cannot download http://127\.0\.0\.1:{unused_port}/ml-100k\.zip.*Download it by hand from "
               r"https://grouplens\.org/.*tfrecsys-data verify movielens-100k")
    with pytest.raises(catalog.DownloadError, match=message):
        catalog.download("movielens-100k", str(tmp_path), mirror=f"http://127.0.0.1:{unused_port}")


def test_login_only_datasets_name_where_to_get_them(tmp_path):
    message = r"taobao-user-behavior needs an Alibaba Tianchi account: sign in at https://tianchi\.aliyun\.com/dataset/649"
    with pytest.raises(catalog.DownloadError, match=message):
        catalog.download("taobao-user-behavior", str(tmp_path))


def _zip_card(tmp_path, members: dict, top: str = "release/") -> catalog.DatasetCard:
    archive = tmp_path / "served" / "release.zip"
    archive.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(archive, "w") as z:
        for name, text in members.items():
            z.writestr(top + name, text)
    data = archive.read_bytes()
    files = tuple(catalog.DataFile(name, lines=text.count("\n")) for name, text in members.items())
    return catalog.DatasetCard("example", "an example release", "https://example.org", "CC0", files,
                               (catalog.RemoteFile("https://example.org/files/release.zip",
                                                   hashlib.sha256(data).hexdigest(), len(data), unpack=True),))


def test_archives_unpack_without_their_top_folder_and_are_verified(tmp_path):
    card = _zip_card(tmp_path, {"ratings.csv": "1,2\n3,4\n", "items.csv": "1\n"})
    files = catalog.download(card, str(tmp_path / "out"), mirror=(tmp_path / "served").as_uri())
    assert sorted(os.listdir(tmp_path / "out")) == ["items.csv", "ratings.csv"]
    assert files == [str(tmp_path / "out" / "ratings.csv"), str(tmp_path / "out" / "items.csv")]
    (tmp_path / "out" / "items.csv").write_text("1\n2\n")
    assert catalog.verify(card, str(tmp_path / "out")) == [f"{tmp_path / 'out' / 'items.csv'}: 2 lines, expected 1"]


def test_an_archive_escaping_its_directory_is_refused(tmp_path):
    card = _zip_card(tmp_path, {"../../escaped.txt": "x\n"}, top="")
    with pytest.raises(catalog.DownloadError, match="would unpack outside the directory"):
        catalog.download(card, str(tmp_path / "out"), mirror=(tmp_path / "served").as_uri())
    assert not (tmp_path / "escaped.txt").exists()


def test_the_shared_copies_match_their_cards():
    assert catalog.verify("movielens-100k", dataset("movielens-100k")) == []
    assert catalog.verify("amazon-beauty", dataset("amazon-beauty-s3rec")) == []
    problems = catalog.verify("census-income-kdd", dataset("census-income-kdd"))
    assert problems == [f"{os.path.join(dataset('census-income-kdd'), 'census-income.data.gz')} is missing"]


def test_cli_download_fails_a_changed_archive(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "ml-100k.zip", "w") as z:
        z.writestr("ml-100k/u.data", "1\t2\t3\t4\n")
    with serving(str(served)) as url:
        failed = subprocess.run([os.path.join(BIN, "tfrecsys-data"), "download", "movielens-100k",
                                 f"--dir={tmp_path / 'out'}", f"--mirror={url}"],
                                capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "tfrecsys-data: error: " in failed.stderr and "expected 4924029" in failed.stderr
