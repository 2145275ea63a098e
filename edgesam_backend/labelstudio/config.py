"""Label Studio label config (XML) → what this backend serves.

The backend needs an ``<Image name value="$key">`` tag and an output it can write masks into:
``<BrushLabels>`` (Label Studio brush RLE) and/or ``<PolygonLabels>`` (polygons traced from the mask
contours), both pointing at that image. Smart inputs — ``<KeyPointLabels smart="true">`` and
``<RectangleLabels smart="true">`` — are optional: they are only needed for interactive clicks, and
any keypoint/rectangle region that arrives in a request's context is used as a prompt.
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

    @property
    def type(self) -> str:
        """The region type Label Studio uses in results (``brushlabels``, ...)."""
        return self.tag.lower()


class LabelConfig(BaseModel):
    image: ImageTag
    brush: list[ControlTag] = Field(default_factory=list)
    polygon: list[ControlTag] = Field(default_factory=list)
    keypoints: list[ControlTag] = Field(default_factory=list)
    rectangles: list[ControlTag] = Field(default_factory=list)

    @property
    def outputs(self) -> list[ControlTag]:
        return [*self.brush, *self.polygon]

    @property
    def output_labels(self) -> list[str]:
        seen: dict[str, None] = {}
        for t in self.outputs:
            for lab in t.labels:
                seen.setdefault(lab, None)
        return list(seen)

    def outputs_for(self, label: str | None, to_name: str | None = None) -> list[ControlTag]:
        """The output controls (at most one brush, one polygon) that write ``label`` on the image.

        With ``label=None`` the first brush and polygon control are returned.
        """
        chosen: list[ControlTag] = []
        for group in (self.brush, self.polygon):
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
    controls: dict[str, list[ControlTag]] = {"brush": [], "polygon": [], "keypoints": [], "rectangles": []}
    kinds = {
        **dict.fromkeys(BRUSH_TAGS, "brush"),
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
                )
            )
    if not images:
        raise LabelConfigError("label config has no <Image> tag: this backend segments images")
    outputs = controls["brush"] + controls["polygon"]
    if not outputs:
        raise LabelConfigError(
            "label config has no <BrushLabels> or <PolygonLabels> tag: nowhere to put the masks"
        )
    # the image the outputs point at (the first one that has an output)
    image = next((im for im in images if any(im.name in t.to_name for t in outputs)), None)
    if image is None:
        names = ", ".join(sorted({n for t in outputs for n in t.to_name}))
        raise LabelConfigError(
            f"<BrushLabels>/<PolygonLabels> point at {names}, which is not an <Image> tag "
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
        polygon=on_image(controls["polygon"]),
        keypoints=on_image(controls["keypoints"]),
        rectangles=on_image(controls["rectangles"]),
    )
