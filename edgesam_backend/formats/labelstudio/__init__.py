"""Label Studio's data formats: :mod:`.rle` (brush RLE codec), :mod:`.regions` (result dicts),
:mod:`.urls` (task image URLs ↔ relative file paths), :mod:`.coords` (percent ↔ pixels, image rotation,
rectangles → boxes)."""
