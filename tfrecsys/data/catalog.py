"""Dataset cards in code: where each public dataset comes from, its checksums and published sizes, and the
download that fetches it from the official URL and verifies it.

The licenses of these datasets forbid redistribution, so the repository holds only the cards
(``data/<name>.md``, in prose; this module, for ``tfrecsys-data``). ``download`` fetches each remote file,
checks its size and SHA-256 where they are published, unpacks archives (dropping a single top-level folder,
so the readers in ``tfrecsys.data.readers`` take the directory as it is), and then checks every data file
against its SHA-256 or, where no checksum is published, its published line count. Datasets behind a login
(Alibaba Tianchi) cannot be fetched by a program: ``download`` says where to get them by hand and
``verify`` checks the files afterwards.
"""

import dataclasses
import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import Optional

CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_S = 120


class DownloadError(RuntimeError):
    """A download or verification that failed; the message names the URL or file and what to do."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: Optional[str] = None  # None where nobody publishes one
    size: Optional[int] = None
    unpack: bool = False  # a .zip / .tar.gz whose members are the data files


@dataclasses.dataclass(frozen=True)
class DataFile:
    """A file of the dataset as the readers take it, with what identifies it."""

    path: str
    sha256: Optional[str] = None
    lines: Optional[int] = None  # checked when no checksum is published
    git_blob_sha1: Optional[str] = None  # the id a verbatim copy in a git repository has


@dataclasses.dataclass(frozen=True)
class DatasetCard:
    name: str
    title: str
    homepage: str
    license: str
    files: tuple
    downloads: tuple = ()
    manual: str = ""  # how to get it when a program cannot (an account, a form)

    @property
    def card_path(self) -> str:
        return f"data/{self.name}.md"


_ML100K_FILES = (
    DataFile("u.data", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490", 100_000),
    DataFile("u.item", "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701", 1_682),
    DataFile("u.user", "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c", 943),
    DataFile("u.genre", "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb"),
    DataFile("u.info", "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b"),
    DataFile("u.occupation", "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d"),
)
_S3REC = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/2a81540ae18615d88ef88227b0c066e5b74781e5/data"
_TIANCHI = ("needs an Alibaba Tianchi account: sign in at {url}, accept the dataset's terms, download the files "
            "into the directory and run `tfrecsys-data verify {name} --dir=<directory>`")

CARDS = {card.name: card for card in (
    DatasetCard(
        "movielens-100k", "MovieLens 100K (GroupLens, 1998)", "https://grouplens.org/datasets/movielens/100k/",
        "GroupLens research license: research use, cite Harper & Konstan 2015, no redistribution, no commercial use",
        _ML100K_FILES,
        (RemoteFile("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                    "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", 4_924_029, unpack=True),)),
    DatasetCard(
        "movielens-1m", "MovieLens 1M (GroupLens, 2003)", "https://grouplens.org/datasets/movielens/1m/",
        "GroupLens research license: research use, cite Harper & Konstan 2015, no redistribution, no commercial use",
        (DataFile("ratings.dat", lines=1_000_209, git_blob_sha1="77a7c4b150f588c23bb9e1f068aa996c0b413695"),
         DataFile("movies.dat", "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9", 3_883),
         DataFile("users.dat", "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3", 6_040)),
        (RemoteFile("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                    "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", 5_917_549, unpack=True),)),
    DatasetCard(
        "amazon-beauty", "Amazon Beauty 5-core sequences with item attributes (S3-Rec release, CIKM 2020)",
        "https://github.com/RUCAIBox/CIKM2020-S3Rec",
        "Amazon review data (McAuley et al.), for research purposes; no open license",
        (DataFile("Beauty.txt", "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8", 22_363),
         DataFile("Beauty_item2attributes.json", "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4")),
        (RemoteFile(f"{_S3REC}/Beauty.txt", "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
                    1_090_094),
         RemoteFile(f"{_S3REC}/Beauty_item2attributes.json",
                    "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4", 305_674))),
    DatasetCard(
        "taobao-user-behavior", "Taobao UserBehavior (Alibaba Tianchi dataset 649)",
        "https://tianchi.aliyun.com/dataset/649",
        "Alibaba Tianchi terms: research, non-commercial, no redistribution",
        (DataFile("UserBehavior.csv", lines=100_150_807),),
        manual=_TIANCHI.format(url="https://tianchi.aliyun.com/dataset/649", name="taobao-user-behavior")),
    DatasetCard(
        "census-income-kdd", "UCI Census-Income (KDD), 1994-1995 Current Population Surveys",
        "https://archive.ics.uci.edu/dataset/117/census+income+kdd",
        "CC BY 4.0 (UCI Machine Learning Repository)",
        # UCI publishes no checksums: the published row counts identify the files.
        (DataFile("census-income.data.gz", lines=199_523), DataFile("census-income.test.gz", lines=99_762)),
        (RemoteFile("https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld/census-income.data.gz"),
         RemoteFile("https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld/census-income.test.gz"))),
    DatasetCard(
        "ali-ccp", "Ali-CCP: Alibaba Click and Conversion Prediction (Tianchi dataset 408, ESMM)",
        "https://tianchi.aliyun.com/dataset/408",
        "Alibaba Tianchi terms: research, non-commercial, no redistribution",
        (),
        manual=_TIANCHI.format(url="https://tianchi.aliyun.com/dataset/408", name="ali-ccp")),
    DatasetCard(
        "aliexpress", "AliExpress Searching System dataset (Tianchi dataset 74690)",
        "https://tianchi.aliyun.com/dataset/74690",
        "Alibaba Tianchi terms: research, non-commercial, no redistribution",
        (),
        manual=_TIANCHI.format(url="https://tianchi.aliyun.com/dataset/74690", name="aliexpress")),
    DatasetCard(
        "criteo-display-ad", "Criteo Display Advertising Challenge (Kaggle 2014)",
        "https://ailab.criteo.com/ressources/",
        "Criteo terms for research use (non-commercial)",
        (DataFile("train.txt", lines=45_840_617), DataFile("test.txt", lines=6_042_135)),
        (RemoteFile("https://go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz",
                    unpack=True),)),
    DatasetCard(
        "criteo-conversion-logs", "Criteo Conversion Logs (Chapelle, KDD 2014: delayed feedback)",
        "https://labs.criteo.com/2013/12/conversion-logs-dataset/",
        "Criteo terms for research use (non-commercial)",
        (DataFile("data.txt", lines=15_898_883),),
        (RemoteFile("http://labs.criteo.com/wp-content/uploads/2014/07/criteo_conversion_logs.tar.gz", unpack=True),)),
)}


def get_card(name) -> DatasetCard:
    """The card of dataset ``name`` (a card passes through, so callers can describe their own datasets)."""
    if isinstance(name, DatasetCard):
        return name
    if name not in CARDS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(CARDS)}")
    return CARDS[name]


def file_digests(path: str) -> tuple[str, int, str, int]:
    """``(sha256, size, git blob sha1, lines)`` of a file, read once; lines of a ``.gz`` file are counted
    after decompression (published counts are of the data)."""
    sha256, git = hashlib.sha256(), hashlib.sha1()
    size = os.path.getsize(path)
    git.update(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            sha256.update(chunk)
            git.update(chunk)
    opener = gzip.open if path.endswith(".gz") else open
    lines = 0
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            lines += chunk.count(b"\n")
    return sha256.hexdigest(), size, git.hexdigest(), lines


def verify(name, directory: str) -> list[str]:
    """Problems with the dataset's files in ``directory`` (empty: every file is there and matches)."""
    card = get_card(name)
    problems = []
    for data_file in card.files:
        path = os.path.join(directory, data_file.path)
        if not os.path.isfile(path):
            problems.append(f"{path} is missing")
            continue
        sha256, _, blob, lines = file_digests(path)
        if data_file.sha256 and sha256 != data_file.sha256:
            problems.append(f"{path}: sha256 {sha256}, expected {data_file.sha256}")
        if data_file.git_blob_sha1 and blob != data_file.git_blob_sha1:
            problems.append(f"{path}: git blob id {blob}, expected {data_file.git_blob_sha1}")
        if data_file.lines is not None and lines != data_file.lines:
            problems.append(f"{path}: {lines} lines, expected {data_file.lines}")
    return problems


def _fetch(url: str, destination: str, remote: RemoteFile) -> None:
    """Streams ``url`` to ``destination`` (hashing as it goes) and checks size and SHA-256 when known."""
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(destination, "wb") as out:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"cannot download {url}: {reason}") from None
    if remote.size is not None and size != remote.size:
        raise DownloadError(f"{url}: got {size} bytes, expected {remote.size} (an interrupted or changed download)")
    if remote.sha256 is not None and digest.hexdigest() != remote.sha256:
        raise DownloadError(f"{url}: sha256 {digest.hexdigest()} does not match the card's {remote.sha256}")


def _safe_members(names: list, archive: str) -> None:
    for member in names:
        parts = member.replace("\\", "/").split("/")
        if member.startswith("/") or ".." in parts:
            raise DownloadError(f"{archive}: member {member!r} would unpack outside the directory")


def _strip_top_folder(names: list) -> str:
    """The single top-level folder every member lies in ("ml-100k/"), or "" when there is none."""
    tops = {name.split("/", 1)[0] for name in names if name.strip("/")}
    nested = all("/" in name.strip("/") or name.endswith("/") for name in names if name.strip("/"))
    return tops.pop() + "/" if len(tops) == 1 and nested else ""


def _unpack(archive: str, directory: str) -> None:
    staging = tempfile.mkdtemp(dir=directory, prefix=".unpack-")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                names = z.namelist()
                _safe_members(names, archive)
                z.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                members = [m for m in t.getmembers() if m.isfile() or m.isdir()]
                names = [m.name + "/" if m.isdir() else m.name for m in members]
                _safe_members(names, archive)
                t.extractall(staging, members=members)
        else:
            raise DownloadError(f"{archive} is neither a zip nor a tar archive")
        root = os.path.join(staging, _strip_top_folder(names))
        for entry in os.listdir(root):
            target = os.path.join(directory, entry)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(root, entry), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(name, directory: str, mirror: str = "") -> list[str]:
    """Fetches dataset ``name`` into ``directory`` and verifies it; returns the verified data files.

    ``mirror``: a base URL (or ``file://`` directory) serving the same file names, used instead of the
    official hosts (a company mirror, an offline copy). Raises DownloadError naming the URL or file.
    """
    card = get_card(name)
    name = card.name
    if card.manual:
        raise DownloadError(f"{name} {card.manual} (see {card.card_path})")
    os.makedirs(directory, exist_ok=True)
    for remote in card.downloads:
        url = mirror.rstrip("/") + "/" + remote.url.rsplit("/", 1)[1] if mirror else remote.url
        basename = url.rsplit("/", 1)[1]
        partial = os.path.join(directory, f".download-{basename}")
        try:
            _fetch(url, partial, remote)
            if remote.unpack:
                _unpack(partial, directory)
            else:
                os.replace(partial, os.path.join(directory, basename))
        except DownloadError as error:
            raise DownloadError(f"{error}. Download it by hand from {card.homepage} into {directory} and run "
                                f"`tfrecsys-data verify {name} --dir={directory}`") from None
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    problems = verify(card, directory)
    if problems:
        raise DownloadError(f"{name}: the downloaded files do not match the card ({card.card_path}): "
                            + "; ".join(problems))
    return [os.path.join(directory, f.path) for f in card.files]
