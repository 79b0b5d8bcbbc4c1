"""kNN-TAPT selection: each training example's k nearest corpus documents (sentence embeddings,
cosine), written with the task's text as the stage's MLM text (dapt/pretrain/knn_selection.py)."""

from dapt.core.errors import run_main
from dapt.runtime import cli


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True, help="model folder: the sentence encoder (mean pooling)")
    p.add_argument("--task", required=True, help="prepared task folder (its train.parquet are the queries)")
    p.add_argument("--corpus", required=True, help="prepared corpus parquet (a text column)")
    p.add_argument("--k", type=int, required=True, help="documents per training example")
    p.add_argument("--out", required=True, help="selection folder: train.parquet, neighbours.parquet, selection.json")
    args = p.parse_args()
    runtime = cli.start(args, model_dir=args.model)

    from dapt.pretrain.knn_selection import select

    where = f"variants: tapt_knn:{args.corpus.rsplit('/', 1)[-1].removesuffix('.parquet')}:{args.k}"
    s = select(args.task, args.corpus, args.model, args.k, args.out, args.params, runtime, where)
    print(
        f"done: {s['selected']} of {s['corpus_documents']} documents ({100 * s['selected_fraction']:.1f}%) for "
        f"{s['queries']} training examples x k {s['k']}; {s['texts']} texts for TAPT ({s['seconds']:.0f}s)"
    )


if __name__ == "__main__":
    run_main(main)
