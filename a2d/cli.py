"""`python -m a2d <command>`: one command per pipeline step; each Snakemake rule calls one.

Files are options of their own; settings come as config sections in JSON (`--decoding`,
`--evaluation`, ...; `--spec` for a system or a split), exactly as the rules hand them over."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from a2d.files import InputError


def cmd_synthesize(args):
    from a2d.files import write_lines
    from a2d.synthetic import generate_splits

    corpus = args.synthetic
    splits = generate_splits(corpus.seed, {"train": corpus.train, "valid": corpus.valid, "test": corpus.test})
    for name, pairs in splits.items():
        write_lines(Path(args.out_dir) / f"{name}.src", [s for s, _ in pairs])
        write_lines(Path(args.out_dir) / f"{name}.tgt", [t for _, t in pairs])


def cmd_fetch(args):
    from a2d.datasets import fetch_side

    origin = fetch_side(args.name, args.lang, json.loads(args.side), args.output, args.mirror or None)
    print(f"{args.name} ({args.lang}): {origin} -> {args.output} (sha256 checked)", file=sys.stderr)


def cmd_prepare(args):
    from a2d.clean import prepare

    prepare(json.loads(args.spec), args.src, args.tgt, args.output_src, args.output_tgt, args.report,
            args.eval_src, args.eval_tgt, args.eval_names, list(zip(args.held_out_src, args.held_out_tgt, strict=True)))


def cmd_train_spm(args):
    from a2d.data import train_sentencepiece

    train_sentencepiece(args.input, args.model, args.sentencepiece, args.threads)


def cmd_encode(args):
    from a2d.data import encode_corpus

    n = encode_corpus(args.src_spm, args.tgt_spm, args.src, args.tgt, args.output)
    print(f"encoded {n} sentence pairs into {args.output}", file=sys.stderr)


def cmd_train(args):
    from a2d.config import SystemSpec
    from a2d.launch import StopRequest, gpus_per_node, launched, run_launcher

    devices = gpus_per_node(args.gpu, args.gres, args.nodes)
    if (args.processes > 1 or args.nodes > 1) and not launched():
        sys.exit(run_launcher(args.argv, args.processes, args.nodes, args.threads, args.rendezvous))
    with StopRequest() as stop:  # before the slow imports, so that an early SIGTERM is not lost
        from a2d.train import train

        train(SystemSpec.from_json(args.spec), train_path=args.train, valid_path=args.valid, valid_ref=args.valid_ref,
              src_spm=args.src_spm, tgt_spm=args.tgt_spm, checkpoint_dir=args.checkpoint_dir, output=args.output,
              summary=args.summary, teacher_path=args.teacher, threads=max(1, args.threads // args.processes),
              processes=args.processes, nodes=args.nodes, devices=devices, stop=stop,
              progress_bar=not args.no_progress)


def cmd_translate(args):
    from a2d.files import write_json
    from a2d.translator import Translator

    translator = Translator(args.model, args.src_spm, args.tgt_spm, decoding=args.decoding, threads=args.threads)
    speed = translator.translate_file(args.input, args.output, progress=False if args.no_progress else None)
    if args.speed:
        write_json(args.speed, speed)
    print(f"{speed['sentences']} sentences in {speed['seconds']:.1f} s: {speed['sentences_per_s']:.1f} sentences/s, "
          f"{speed['tokens_per_s']:.0f} generated tokens/s", file=sys.stderr)


def cmd_export(args):
    if args.format == "hf":
        from a2d.huggingface import export_hf

        export_hf(args.model, args.src_spm, args.tgt_spm, args.output, args.decoding, tuple(args.languages))
        print(f"{args.model} -> {args.output} (Hugging Face transformers)", file=sys.stderr)
        return
    from a2d.export import export_ctranslate2

    quantization = args.export.quantization
    size = export_ctranslate2(args.model, args.src_spm, args.tgt_spm, args.output, quantization)
    print(f"{args.model} -> {args.output} (CTranslate2, {quantization}, {size / 1e6:.2f} MB)", file=sys.stderr)


def cmd_evaluate(args):
    from a2d.evaluate import score_files
    from a2d.files import write_json

    scores = score_files(args.hyp, args.ref, args.evaluation, args.src)
    result = {"system": args.system, "test_set": args.test_set, **scores}
    write_json(args.output, result)
    print(result["bleu_detail"], file=sys.stderr)


def cmd_significance(args):
    from a2d.evaluate import significance
    from a2d.files import write_json
    from a2d.plan import seed_pairs

    hyps = dict(zip(args.systems, args.hyps, strict=True))
    rows = significance(hyps, args.ref, seed_pairs(args.systems, args.baselines), args.evaluation)
    write_json(args.output, {"test_set": args.test_set, "samples": args.evaluation.bootstrap_samples,
                             "comparisons": rows})


def cmd_shard(args):
    from a2d.shards import split

    split(args.input, args.outputs)


def cmd_merge_shards(args):
    from a2d.shards import merge

    merge(args.source, args.shard_sources, args.shard_outputs, args.src_output, args.tgt_output)


def cmd_plot_training(args):
    from a2d.figures import plot_training

    plot_training(args.summary, args.output)


def cmd_plot_alignment(args):
    from a2d.figures import plot_alignment

    plot_alignment(args.summary, args.output)


def cmd_tables(args):
    from a2d.tables import write_tables

    write_tables(args.metrics, args.summaries, args.out_dir, significance_paths=args.significance,
                 figure_paths=args.figures, baselines=args.baselines, evaluation=args.evaluation,
                 config_json=args.config, cleaning_path=args.cleaning_report, cleaning=args.cleaning,
                 speed_paths=args.speeds, model_paths=args.models, export_paths=args.exports,
                 benchmark_paths=args.benchmarks)


def add_section(s: argparse.ArgumentParser, name: str) -> None:
    """--<name> JSON: the config section `name` (a2d.config.SECTIONS), the fields that differ from
    their defaults; every command takes its settings this one way."""
    from a2d.config import SECTIONS
    from a2d.settings import ConfigError

    cls, path = SECTIONS[name]
    required = "required" in cls.schema()

    def parse(text: str):
        try:
            return cls.from_json(text, cls.__name__)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    s.add_argument(f"--{name.replace('_', '-')}", type=parse, required=required, **({} if required else {"default": cls()}),
                   metavar="JSON", help=f"the config's {'.'.join(path)} section as JSON ({cls.__name__}; "
                   + ("its fields are required)" if required else "unset fields take their defaults)"))


def add_baselines(s: argparse.ArgumentParser) -> None:
    s.add_argument("--baselines", type=json.loads, default={}, metavar="JSON",
                   help='the baseline students and their methods (a2d.plan.baselines), e.g. {"student_nokd": "none"}')


def add_subword_models(s: argparse.ArgumentParser) -> None:
    s.add_argument("--src-spm", required=True, help="source SentencePiece model")
    s.add_argument("--tgt-spm", required=True, help="target SentencePiece model (the same file when joint)")


def add_data_commands(sub) -> None:
    s = sub.add_parser("synthesize", help="write the seeded synthetic language pair (train/valid/test)")
    add_section(s, "synthetic")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(run=cmd_synthesize)

    s = sub.add_parser("fetch", help="one side of a registry dataset, from a mirror or its source, sha256-checked")
    s.add_argument("--name", required=True, help="registry name, e.g. wmt22_de_dsb/train")
    s.add_argument("--lang", required=True)
    s.add_argument("--side", required=True, help="the registry entry's side for this language, as JSON")
    s.add_argument("--mirror", default="", help="local mirror directory (empty: none)")
    s.add_argument("--output", required=True)
    s.set_defaults(run=cmd_fetch)

    s = sub.add_parser("prepare", help="concatenate, preprocess and (training data) clean one split")
    s.add_argument("--spec", required=True, help="the split's resolved data config as JSON (a2d.plan.split_spec)")
    s.add_argument("--src", nargs="+", required=True, help="source side of each dataset, in order")
    s.add_argument("--tgt", nargs="+", required=True, help="target side of each dataset, in order")
    s.add_argument("--output-src", required=True)
    s.add_argument("--output-tgt", required=True)
    s.add_argument("--report", help="clean the data and write the cleaning report here (training data)")
    for option, what in (("eval-src", "evaluation sets to check overlap against"), ("eval-tgt", None),
                         ("eval-names", None), ("held-out-src", "where the spec's held_out splits go, in its order"),
                         ("held-out-tgt", None)):
        s.add_argument(f"--{option}", nargs="*", default=[], help=what)
    s.set_defaults(run=cmd_prepare)


def add_subword_commands(sub) -> None:
    s = sub.add_parser("train-spm", help="train a SentencePiece model on one or more text files")
    s.add_argument("--input", nargs="+", required=True, help="text files, one sentence per line")
    s.add_argument("--model", required=True, help="output .model path (a .vocab is written beside it)")
    add_section(s, "sentencepiece")
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(run=cmd_train_spm)

    s = sub.add_parser("encode", help="encode a parallel corpus to subword ids (safetensors)")
    add_subword_models(s)
    s.add_argument("--src", required=True)
    s.add_argument("--tgt", required=True)
    s.add_argument("--output", required=True)
    s.set_defaults(run=cmd_encode)


def add_train_command(sub) -> None:
    s = sub.add_parser("train", help="train a teacher or distil a student on a DeepSpeed engine")
    s.add_argument("--spec", required=True, help="the system's resolved spec as JSON (a2d.config.SystemSpec)")
    s.add_argument("--train", required=True, help="encoded training corpus")
    s.add_argument("--valid", required=True, help="encoded validation corpus")
    s.add_argument("--valid-ref", required=True, help="validation references, plain text")
    add_subword_models(s)
    s.add_argument("--teacher", help="teacher weights, for distillation methods")
    s.add_argument("--checkpoint-dir", required=True, help="where to keep resumable checkpoints")
    s.add_argument("--output", required=True, help="best weights (.safetensors)")
    s.add_argument("--summary", required=True, help="training summary (.json)")
    s.add_argument("--threads", type=int, default=1, help="CPU threads of the whole job (shared by its processes)")
    s.add_argument("--processes", type=int, default=1,
                   help="data-parallel processes per node (one per GPU); above 1, torchrun starts them")
    s.add_argument("--nodes", type=int, default=1, help="nodes (inside a SLURM allocation: srun starts torchrun on each)")
    s.add_argument("--rendezvous", default="", metavar="HOST:PORT",
                   help="several nodes without SLURM: start this same command on every node, with the first node's "
                   "address and a free port")
    s.add_argument("--gpu", type=int, default=0, help="GPUs asked of SLURM for the job (the rule's gpu resource); "
                   "training checks at start-up that CUDA sees them (0: no check)")
    s.add_argument("--gres", default="", help="SLURM generic resources asked for (gpu:N = N GPUs per node, checked)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(run=cmd_train)


def add_model_commands(sub) -> None:
    s = sub.add_parser("translate", help="translate a text file with beam search (a2d.Translator)")
    s.add_argument("--model", required=True, help="weights written by `train` (.safetensors), or a CTranslate2 "
                   "directory written by `export`")
    add_subword_models(s)
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    add_section(s, "decoding")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--speed", help="also write the decoding speed here (.json)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (shown from 1,000 sentences on)")
    s.set_defaults(run=cmd_translate)

    s = sub.add_parser("export", help="a trained model as a CTranslate2 model directory (int8 by default) or a "
                       "Hugging Face transformers one")
    s.add_argument("--model", required=True, help="weights written by `train` (.safetensors)")
    add_subword_models(s)
    s.add_argument("--output", required=True, help="model directory (replaced)")
    s.add_argument("--format", choices=["ctranslate2", "hf"], default="ctranslate2",
                   help="hf: AutoModelForSeq2SeqLM and AutoTokenizer load it, generate() translates")
    add_section(s, "export")
    add_section(s, "decoding")
    s.add_argument("--languages", nargs=2, default=["src", "tgt"], metavar=("SOURCE", "TARGET"),
                   help="hf: the language codes its config names")
    s.set_defaults(run=cmd_export)


def add_scoring_commands(sub) -> None:
    s = sub.add_parser("evaluate", help="BLEU, chrF, chrF++ and TER with sacrebleu (and COMET when configured), "
                       "saved as JSON with signatures and 95%% intervals")
    for option in ("hyp", "ref", "system", "test-set", "output"):
        s.add_argument(f"--{option}", required=True)
    s.add_argument("--src", help="the source sentences, which COMET reads")
    add_section(s, "evaluation")
    s.set_defaults(run=cmd_evaluate)

    s = sub.add_parser("significance", help="paired test (bootstrap or approximate randomisation) of every student against the baseline students")
    s.add_argument("--ref", required=True)
    s.add_argument("--test-set", required=True)
    s.add_argument("--systems", nargs="+", required=True, help="run names, in the order of --hyps")
    s.add_argument("--hyps", nargs="+", required=True)
    add_baselines(s)
    s.add_argument("--output", required=True)
    add_section(s, "evaluation")
    s.set_defaults(run=cmd_significance)


def add_shard_commands(sub) -> None:
    s = sub.add_parser("shard", help="split a text file into contiguous shards for parallel jobs")
    s.add_argument("--input", required=True)
    s.add_argument("--outputs", nargs="+", required=True, help="one path per shard, in order")
    s.set_defaults(run=cmd_shard)

    s = sub.add_parser("merge-shards", help="merge translated shards into a parallel corpus, in order")
    s.add_argument("--source", required=True, help="the original source file")
    s.add_argument("--shard-sources", nargs="+", required=True)
    s.add_argument("--shard-outputs", nargs="+", required=True, help="translations, one file per shard")
    s.add_argument("--src-output", required=True)
    s.add_argument("--tgt-output", required=True)
    s.set_defaults(run=cmd_merge_shards)


def add_report_commands(sub) -> None:
    for name, run, what in (("plot-training", cmd_plot_training, "training curves of every loss term"),
                            ("plot-alignment", cmd_plot_alignment, "the AAM's learned weights as heatmaps")):
        s = sub.add_parser(name, help=f"PNG of {what}, from a training summary")
        s.add_argument("--summary", required=True, help="train.json written by `train`")
        s.add_argument("--output", required=True, help=".png")
        s.set_defaults(run=run)

    s = sub.add_parser("tables", help="results.md/.csv/.tex, training.md/.csv and provenance.json from metrics, significance tests and training summaries")
    s.add_argument("--metrics", nargs="+", required=True, help="JSON files written by `evaluate`")
    s.add_argument("--summaries", nargs="+", required=True, help="JSON files written by `train`")
    s.add_argument("--significance", nargs="*", default=[], help="JSON files written by `significance`")
    add_baselines(s)
    add_section(s, "evaluation")
    s.add_argument("--config", default="{}", help="the resolved experiment as JSON (provenance)")
    s.add_argument("--cleaning-report", help="train.cleaning.json: overlaps above cleaning.overlap_warning go under the table")
    add_section(s, "cleaning")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--figures", nargs="*", default=[], help="PNG files to link, named <system>.<kind>.png")
    s.add_argument("--speeds", nargs="*", default=[], help="decoding speeds written by `translate --speed`, "
                   "named <system>.<test set>.speed.json")
    s.add_argument("--models", nargs="*", default=[], help="model weights, named <system>/model.safetensors")
    s.add_argument("--exports", nargs="*", default=[], help="CTranslate2 directories written by `export`, "
                   "named <system>.ct2")
    s.add_argument("--benchmarks", nargs="*", default=[], help="Snakemake benchmarks of the train jobs, "
                   "named <system>.tsv (the training table's wall time and peak RSS)")
    s.set_defaults(run=cmd_tables)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m a2d", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (add_data_commands, add_subword_commands, add_train_command, add_model_commands,
                add_scoring_commands, add_shard_commands, add_report_commands):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    try:
        args.run(args)
    except (InputError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
