"""Which representation a WADO-RS client accepts (pure; PS3.18 8.7.3 Accept header)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import NotAcceptable

# Transfer syntaxes whose frames have a media type of their own (PS3.18 Table 8.7.3-2).
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


@dataclass(frozen=True)
class Accepted:
    media_type: str                 # e.g. multipart/related or application/octet-stream
    part_type: str = ""             # the "type" parameter of multipart/related
    transfer_syntax: str = ""       # the transfer-syntax parameter ("" = any)


def parse_accept(header: str | None) -> list[Accepted]:
    """Each alternative of an Accept header, in the order given (q values ignored)."""
    out: list[Accepted] = []
    for item in (header or "*/*").split(","):
        media, *params = [p.strip() for p in item.split(";")]
        values: dict[str, str] = {}
        for param in params:
            name, _, value = param.partition("=")
            values[name.strip().lower()] = value.strip().strip('"')
        if media:
            out.append(Accepted(media.lower(), values.get("type", "").lower(),
                                values.get("transfer-syntax", "")))
    return out


def _ts_ok(accepted: Accepted, stored: set[str]) -> bool:
    return accepted.transfer_syntax in ("", "*") or stored == {accepted.transfer_syntax}


def choose_instances(header: str | None, stored: set[str], single: bool) -> str:
    """'multipart' or 'single' (application/dicom, one instance only); else 406."""
    for a in parse_accept(header):
        if a.media_type in ("*/*", "multipart/*") and not a.part_type:
            return "multipart"
        if a.media_type == "multipart/related" and a.part_type in ("", "application/dicom",
                                                                   "*/*") and _ts_ok(a, stored):
            return "multipart"
        if a.media_type == "application/dicom" and single and _ts_ok(a, stored):
            return "single"
    raise NotAcceptable("this node serves instances as stored: multipart/related; "
                        f'type="application/dicom" (stored transfer syntax: '
                        f'{", ".join(sorted(stored))})')


def choose_bytes(header: str | None, transfer_syntax: str) -> tuple[str, str]:
    """Frames / bulk data: ('multipart' | 'single', part media type); else 406."""
    native = FRAME_MEDIA.get(transfer_syntax, "application/octet-stream")
    for a in parse_accept(header):
        if a.media_type == "*/*":
            return "multipart", native
        if a.media_type == "multipart/related":
            if a.part_type in ("", "*/*", native) or (
                    a.part_type == "application/octet-stream"
                    and a.transfer_syntax in ("", "*", transfer_syntax)):
                return "multipart", native if a.part_type != "application/octet-stream" \
                    else "application/octet-stream"
        if a.media_type in (native, "application/octet-stream"):
            return "single", a.media_type
    raise NotAcceptable(f"this data is stored as {native}; accept it as multipart/related "
                        f'or application/octet-stream')


def choose_rendered(header: str | None) -> str:
    for a in parse_accept(header):
        if a.media_type in ("*/*", "image/*", "image/jpeg"):
            return "image/jpeg"
        if a.media_type == "image/png":
            return "image/png"
    raise NotAcceptable("rendered images are image/jpeg or image/png")
