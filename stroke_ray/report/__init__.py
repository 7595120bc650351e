"""The HTML report users look at: pages (:mod:`.pages`), case pictures and QC (:mod:`.cases`),
figures (:mod:`.figures`, the only users of matplotlib) and HTML building blocks (:mod:`.html`)."""

from stroke_ray.report.pages import ReportError, load_segmentation, write_report

__all__ = ["ReportError", "load_segmentation", "write_report"]
