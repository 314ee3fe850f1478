"""The ISIC 2019 label set and its class counts: the one place that names the classes."""

CLASSES: tuple[str, ...] = ("AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC")
ISIC2019_COUNTS: dict[str, int] = {
    "NV": 12875,
    "MEL": 4522,
    "BCC": 3323,
    "BKL": 2624,
    "AK": 867,
    "SCC": 628,
    "VASC": 253,
    "DF": 239,
}
