"""a2d: Align-to-Distill knowledge distillation for neural machine translation.

`a2d.Translator` translates with a trained model; the rest is the pipeline's (`python -m a2d`)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: `import a2d.config` (Snakemake's) stays free of torch.
    if name == "Translator":
        from a2d.translator import Translator

        return Translator
    raise AttributeError(f"module 'a2d' has no attribute {name!r}")
