"""Annotation file formats, torch-free and independent of the serving code: Label Studio
(:mod:`.labelstudio`: brush RLE, result regions, task URLs, percent/rotation geometry), COCO
(:mod:`.coco`: the instances reader and segmentation RLE), YOLO-seg (:mod:`.yolo`), mask → polygon
conversion (:mod:`.polygons`, one pixel convention) and image file extensions (:mod:`.imagefiles`).

``labelstudio/`` (the ML backend), ``pipeline/`` and ``training/`` import from here; nothing here
imports them.
"""
