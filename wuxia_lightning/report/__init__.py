"""Turn a run folder into a Markdown report with PNG plots (SPEC §4: what `validate` / `predict` wrote).

Inputs, all but ``metrics.csv`` optional: Lightning's CSVLogger ``metrics.csv`` (sparse rows: each row
holds only the metrics logged at that step), ``hparams.yaml``, ``style_eval.json`` (stage-1 function-word
rates of corpus / base / styled model) and a predict output folder (``predictions.jsonl`` +
``summary.json``). Anything missing becomes "not logged" in the report instead of an error.

One job per module: ``inputs`` reads the run folder, ``plots`` draws, ``fonts`` finds a font for the
Chinese labels, ``markdown`` writes the report.
"""

from wuxia_lightning.report.fonts import feature_label
from wuxia_lightning.report.inputs import detect_stage, read_metrics
from wuxia_lightning.report.markdown import best_value, build_report
from wuxia_lightning.report.plots import ema, plot_curves, plot_function_words

__all__ = ["best_value", "build_report", "detect_stage", "ema", "feature_label", "plot_curves",
           "plot_function_words", "read_metrics"]
