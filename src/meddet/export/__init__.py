"""Results in the forms a radiologist opens: a DICOM Segmentation for PACS/viewers, and a PNG overview.

Submodules are imported on use (``meddet.export.dicom_seg``, ``meddet.export.overlay``) so that neither
highdicom nor matplotlib is loaded by commands that do not need them.
"""
