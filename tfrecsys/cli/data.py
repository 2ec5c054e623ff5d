"""tfrecsys-data: fetch the public datasets from their official URLs and verify them against their cards.

    tfrecsys-data list
    tfrecsys-data download movielens-100k [--dir=runs/datasets/movielens-100k] [--mirror=https://mirror/ml/]
    tfrecsys-data verify taobao-user-behavior --dir=/data/taobao

download checks each file's size and SHA-256 where they are published, unpacks archives and then checks every
data file (SHA-256, or the published line count where no checksum exists). Datasets behind a login (Alibaba
Tianchi) are downloaded by hand; verify checks them. The cards are data/<name>.md; the licenses forbid
redistribution, so nothing is ever copied into the repository.
"""

import os

from absl import app, flags

from tfrecsys.cli.common import run_binary

_DIR = flags.DEFINE_string("dir", None, "Directory of the dataset's files (default: runs/datasets/<name>).")
_MIRROR = flags.DEFINE_string(
    "mirror", "", "Base URL serving the same file names as the official hosts (a company mirror, or file:///path "
    "for a local copy); the card's checksums still apply.")

_COMMANDS = ("list", "download", "verify")


def main(argv):
    from tfrecsys.data import catalog

    args = argv[1:]
    if not args or args[0] not in _COMMANDS:
        raise app.UsageError(f"usage: tfrecsys-data {{{'|'.join(_COMMANDS)}}} [NAME]")
    command = args[0]
    if command == "list":
        for name, card in sorted(catalog.CARDS.items()):
            how = "by hand (account needed)" if card.manual else "download"
            print(f"{name:24s} {how:26s} {card.title}")
        return
    if len(args) != 2:
        raise app.UsageError(f"usage: tfrecsys-data {command} NAME (names: {sorted(catalog.CARDS)})")
    name = args[1]
    directory = _DIR.value or os.path.join("runs", "datasets", name)
    try:
        if command == "download":
            files = catalog.download(name, directory, mirror=_MIRROR.value)
            print(f"{name}: downloaded and verified {len(files)} files in {directory}")
            return
        card = catalog.get_card(name)
        problems = catalog.verify(name, directory)
    except catalog.DownloadError as error:
        raise ValueError(str(error)) from None
    if problems:
        raise ValueError(f"{name} in {directory} does not match its card ({card.card_path}): " + "; ".join(problems))
    print(f"{name}: {len(card.files)} files in {directory} match the card")


def run():
    run_binary("tfrecsys-data", __name__, __doc__, main)


if __name__ == "__main__":
    run()
