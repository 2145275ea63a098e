"""Label Studio label config (XML) → what this backend serves.

The backend needs an ``<Image name value="$key">`` tag and an output it can write masks into, in any
combination: ``<BrushLabels>`` (Label Studio brush RLE), ``<BitmaskLabels>`` (a PNG data URL, Label
Studio 1.23's pixel-precise mask tag), ``<PolygonLabels>`` (polygons traced from the mask contours)
and a ``<RectangleLabels>`` that is *not* smart (the tight box of the mask; a smart one is a prompt
input only), all pointing at that image. ``<Label value="Car" predicted_values="car,truck"/>`` maps
labels of existing regions (e.g. a detector's boxes) onto an output label. Smart inputs —
``<KeyPointLabels smart="true">`` and ``<RectangleLabels smart="true">`` — are optional: they are only
needed for interactive clicks, and any keypoint/rectangle region that arrives in a request's context
is used as a prompt.
Anything else in the config (choices, text areas, other objects) is ignored.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from functools import lru_cache

from pydantic import BaseModel, Field

MAX_CONFIG_CHARS = 1_000_000

#: Tag names (lower-cased) this backend reads.
IMAGE_TAG = "image"
BRUSH_TAGS = ("brushlabels",)
BITMASK_TAGS = ("bitmasklabels",)
POLYGON_TAGS = ("polygonlabels",)
KEYPOINT_TAGS = ("keypointlabels",)
RECTANGLE_TAGS = ("rectanglelabels",)


class LabelConfigError(ValueError):
    """The label config is not XML, or it has nothing this backend can serve."""


class ImageTag(BaseModel):
    name: str
    value_key: str = Field(description="the task-data key of the image URL ($image → 'image')")


class ControlTag(BaseModel):
    """A labels control: ``<BrushLabels>``, ``<PolygonLabels>``, ``<KeyPointLabels>`` or
    ``<RectangleLabels>``."""

    tag: str
    name: str
    to_name: list[str]
    labels: list[str]
    smart: bool = False
    #: ``predicted_values`` of each label: source label name → this control's label
    predicted: dict[str, str] = Field(default_factory=dict)

    @property
    def type(self) -> str:
        """The region type Label Studio uses in results (``brushlabels``, ...)."""
        return self.tag.lower()


class LabelConfig(BaseModel):
    image: ImageTag
    brush: list[ControlTag] = Field(default_factory=list)
    bitmask: list[ControlTag] = Field(default_factory=list)
    polygon: list[ControlTag] = Field(default_factory=list)
    keypoints: list[ControlTag] = Field(default_factory=list)
    rectangles: list[ControlTag] = Field(default_factory=list)

    @property
    def box_outputs(self) -> list[ControlTag]:
        """Non-smart ``<RectangleLabels>``: they receive the tight box of each mask."""
        return [t for t in self.rectangles if not t.smart]

    @property
    def outputs(self) -> list[ControlTag]:
        return [*self.brush, *self.bitmask, *self.polygon, *self.box_outputs]

    def map_label(self, source: str, label_map: dict[str, str] | None = None) -> str | None:
        """The output label for a region labelled ``source`` (e.g. a detector's class): the explicit
        ``label_map`` first, then a label whose ``predicted_values`` lists it, then the same name, then
        the same name ignoring case; None when nothing matches."""
        labels = self.output_labels
        if label_map and source in label_map:
            return label_map[source] if label_map[source] in labels else None
        for t in self.outputs:
            if source in t.predicted:
                return t.predicted[source]
        if source in labels:
            return source
        low = {lab.lower(): lab for lab in labels}
        return low.get(source.lower())

    @property
    def output_labels(self) -> list[str]:
        seen: dict[str, None] = {}
        for t in self.outputs:
            for lab in t.labels:
                seen.setdefault(lab, None)
        return list(seen)

    def outputs_for(self, label: str | None, to_name: str | None = None) -> list[ControlTag]:
        """The output controls (at most one of each kind: brush, bitmask, polygon, box) that write
        ``label`` on the image.

        With ``label=None`` the first control of each kind is returned.
        """
        chosen: list[ControlTag] = []
        for group in (self.brush, self.bitmask, self.polygon, self.box_outputs):
            for t in group:
                if to_name is not None and to_name not in t.to_name:
                    continue
                if label is None or label in t.labels:
                    chosen.append(t)
                    break
        return chosen


def _children(elem: ET.Element) -> list[ET.Element]:
    return [c for c in elem.iter() if isinstance(c.tag, str)]


def _labels(elem: ET.Element) -> list[str]:
    out: list[str] = []
    for c in elem.iter():
        if c is elem or not isinstance(c.tag, str) or c.tag.lower() != "label":
            continue
        v = c.get("value")
        if v is None:
            v = c.get("alias")
        if v is not None and v not in out:
            out.append(v)
    return out


def _predicted(elem: ET.Element) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in elem.iter():
        if c is elem or not isinstance(c.tag, str) or c.tag.lower() != "label":
            continue
        value = c.get("value") or c.get("alias")
        for src in (c.get("predicted_values") or "").split(","):
            if value and src.strip():
                out.setdefault(src.strip(), value)
    return out


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("true", "1", "yes")


@lru_cache(maxsize=64)
def parse_label_config(xml: str) -> LabelConfig:
    """Parse and validate a label config; raises :class:`LabelConfigError` with a clear message."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label config is empty")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"label config is larger than {MAX_CONFIG_CHARS} characters")
    if "<!ENTITY" in xml.upper() or "<!DOCTYPE" in xml.upper():
        raise LabelConfigError("label config must not declare a DOCTYPE or entities")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not valid XML: {exc}") from None

    images: list[ImageTag] = []
    controls: dict[str, list[ControlTag]] = {
        "brush": [],
        "bitmask": [],
        "polygon": [],
        "keypoints": [],
        "rectangles": [],
    }
    kinds = {
        **dict.fromkeys(BRUSH_TAGS, "brush"),
        **dict.fromkeys(BITMASK_TAGS, "bitmask"),
        **dict.fromkeys(POLYGON_TAGS, "polygon"),
        **dict.fromkeys(KEYPOINT_TAGS, "keypoints"),
        **dict.fromkeys(RECTANGLE_TAGS, "rectangles"),
    }
    for el in _children(root):
        tag = el.tag.lower()
        if tag == IMAGE_TAG:
            name, value = el.get("name"), (el.get("value") or "").strip()
            if not name:
                raise LabelConfigError("an <Image> tag has no name attribute")
            if not value.startswith("$") or len(value) < 2:
                raise LabelConfigError(
                    f'<Image name="{name}"> must take its URL from the task data, e.g. value="$image"; '
                    f"got value={value!r}"
                )
            images.append(ImageTag(name=name, value_key=value[1:]))
        elif tag in kinds:
            name, to = el.get("name"), el.get("toName") or el.get("toname")
            if not name or not to:
                raise LabelConfigError(f"<{el.tag}> needs both name and toName attributes")
            controls[kinds[tag]].append(
                ControlTag(
                    tag=el.tag,
                    name=name,
                    to_name=[t.strip() for t in to.split(",") if t.strip()],
                    labels=_labels(el),
                    smart=_truthy(el.get("smart")) or _truthy(el.get("smartOnly")),
                    predicted=_predicted(el),
                )
            )
    if not images:
        raise LabelConfigError("label config has no <Image> tag: this backend segments images")
    outputs = [
        *controls["brush"],
        *controls["bitmask"],
        *controls["polygon"],
        *(t for t in controls["rectangles"] if not t.smart),
    ]
    if not outputs:
        raise LabelConfigError(
            "label config has no <BrushLabels>, <BitmaskLabels>, <PolygonLabels> or non-smart "
            "<RectangleLabels> tag: nowhere to put the masks"
        )
    # the image the outputs point at (the first one that has an output)
    image = next((im for im in images if any(im.name in t.to_name for t in outputs)), None)
    if image is None:
        names = ", ".join(sorted({n for t in outputs for n in t.to_name}))
        raise LabelConfigError(
            f"the output tags point at {names}, which is not an <Image> tag "
            f"(images: {', '.join(i.name for i in images)})"
        )
    for t in outputs:
        if image.name in t.to_name and not t.labels:
            raise LabelConfigError(f'<{t.tag} name="{t.name}"> has no <Label value="..."/> children')

    def on_image(ts: list[ControlTag]) -> list[ControlTag]:
        return [t for t in ts if image.name in t.to_name]

    return LabelConfig(
        image=image,
        brush=on_image(controls["brush"]),
        bitmask=on_image(controls["bitmask"]),
        polygon=on_image(controls["polygon"]),
        keypoints=on_image(controls["keypoints"]),
        rectangles=on_image(controls["rectangles"]),
    )
