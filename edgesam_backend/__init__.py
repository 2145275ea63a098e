"""EdgeSAM for labeling: engine, Label Studio ML backend and bulk-segmentation pipelines."""

__version__ = "0.1.0"
