"""Source readers for the public datasets the models are published on, in their original formats.

Each module reads one format into numpy columns (``read_*``) and describes it for preprocessing (``SOURCE``);
both parse rows with the same functions, and both keep malformed rows with the reason instead of dropping
them. ``SOURCES`` maps the names ``tfrecsys-preprocess --source`` takes (and ``data/<name>.md`` cards use)
to those descriptions.
"""

from tfrecsys.data.readers import aliexpress, ali_ccp, amazon, census, criteo, movielens, taobao
from tfrecsys.data.readers.common import BadRow, RowError, Source, SourceFile

SOURCES = {source.name: source for source in (
    movielens.SOURCE_100K, movielens.SOURCE_1M, amazon.SOURCE, taobao.SOURCE, census.SOURCE, ali_ccp.SOURCE,
    aliexpress.SOURCE, criteo.DISPLAY_SOURCE, criteo.CONVERSION_SOURCE)}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known sources: {sorted(SOURCES)}")
    return SOURCES[name]


__all__ = ["BadRow", "RowError", "SOURCES", "Source", "SourceFile", "get_source"]
