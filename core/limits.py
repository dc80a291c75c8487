"""Upload caps: the one place the app's limits on uploaded content are defined.

Every check that refuses "too much" imports its number from here, and
``.streamlit/config.toml``'s ``server.maxUploadSize`` must equal
:data:`MAX_UPLOAD_MB` (a test reads the toml and compares), so the browser and
``core`` refuse the same thing.

Sizing. A PACS export of one abdominal CT series is 100–600 slices of 512×512
16-bit pixels, about 0.5 MB each uncompressed: 50–300 MB per series, a few
series per study. The caps admit a study of several such series while keeping
the server's memory bounded (Streamlit holds every uploaded file in memory
while the widget shows it).
"""

from __future__ import annotations

#: Largest single uploaded file (MB = 2**20 bytes): one ZIP, or one file of a folder upload.
#: Streamlit's ``server.maxUploadSize`` is per file and in these same units.
MAX_UPLOAD_MB = 1024
#: Most files in one upload: files of a folder / multi-file upload, or entries of one ZIP.
MAX_FILES = 3000
#: Most bytes one upload may hold once expanded: the sum of a folder upload's files,
#: or the total uncompressed size of a ZIP's entries.
MAX_TOTAL_BYTES = 2 * 1024**3
#: Largest image side in pixels (a CT slice is 512; 4096 admits any scanner's matrix).
MAX_SIDE_PX = 4096
#: Smallest image side in pixels (smaller is a thumbnail or an icon, not a slice).
MIN_SIDE_PX = 32
#: Most voxels in an imported 3-D outline (NIfTI) or most frames × pixels in a DICOM SEG:
#: 2,000 slices of 512×512, ample for one abdominal series.
MAX_OUTLINE_VOXELS = 2000 * 512 * 512
#: Most frames in one DICOM SEG.
MAX_SEG_FRAMES = 5000
