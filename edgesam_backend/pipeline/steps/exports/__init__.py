"""Built-in exports: COCO, Label Studio, PNG masks, YOLO-seg, visual preview."""
