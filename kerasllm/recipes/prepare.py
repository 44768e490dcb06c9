"""Tokenize a recipe's corpus into the token store, ahead of training.

    python -m kerasllm.recipes.prepare [--recipe NAME_OR_PATH] [--data PATH_OR_DATASET]
                                       [--set key=value ...]

Streams the corpus (files, directories, globs; .txt, .jsonl, .csv, .tsv, .parquet, plain or
.gz/.bz2/.zst), trains the tokenizer on a seeded sample and writes shards of token ids with
`data.num_proc` workers into the cache, printing MB read, tokens written, MB/s and ETA.
Killed and run again, it resumes from the last complete shard. `pretrain` with the same data
settings then reuses the store instead of tokenizing again.
"""


from kerasllm.config import load_config
from kerasllm.recipes.cli import recipe_parser, run_cli


def build_parser():
    parser = recipe_parser(
        "python -m kerasllm.recipes.prepare", "Tokenize a corpus into a sharded, memory-mapped token store.",
        data_help="a file, a directory or glob of files",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set data.num_proc=4 (repeatable)",
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.insert(0, "data.dataset=" + '"' + args.data.replace("\\", "\\\\").replace('"', '\\"') + '"')
    config = load_config(args.recipe, overrides)

    from kerasllm.data.mixture import prepare_training_data  # heavy imports after argument checks

    data = prepare_training_data(config.data)
    for store in data.store if isinstance(data.store, list) else [data.store]:  # a mixture: one per source
        print(f"token store: {store.directory} ({len(store):,} tokens in {len(store.index['shards'])} shards)")


if __name__ == "__main__":
    run_cli(main)
