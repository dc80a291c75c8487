"""Outline import (DICOM SEG, NIfTI, PNG) and export (DICOM SEG, PNG): core.segmentation."""

from __future__ import annotations

import gzip
import io
import struct

import cv2
import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from core.dicomref import SourceReference, reference_from_dict
from core.errors import OutlineImportError, RoiError
from core.imaging import load_slice
from core.segmentation import (
    export_png,
    export_seg,
    import_nifti,
    import_png_mask,
    import_seg,
    nifti_labels,
    seg_segments,
)
from core.series import SeriesSummary, UploadScan, load_series_slice, scan_upload
from tests.core.ct_series import as_files, series_datasets, to_bytes

N = 5


@pytest.fixture(scope="module")
def study() -> tuple[list[pydicom.Dataset], UploadScan, SeriesSummary, np.ndarray]:
    """A 5-slice CT series and a tumour on slices 1–3 (largest on 2), a liver around it."""
    datasets = series_datasets(N)
    scan = scan_upload(as_files(datasets, seed=11))
    tumour = np.zeros((N, 128, 128), dtype=bool)
    tumour[1, 40:50, 40:52] = True
    tumour[2, 30:70, 35:80] = True
    tumour[2, 90:95, 90:95] = True  # a second region on the same slice
    tumour[3, 50:60, 50:60] = True
    return datasets, scan, scan.series[0], tumour


def _seg(datasets: list[pydicom.Dataset], tumour: np.ndarray, *, with_liver: bool = True) -> bytes:
    """A multi-frame SEG made with highdicom on the series, as 3D Slicer / MONAI Label would write it."""
    segments = []
    arrays = []
    if with_liver:
        segments.append(
            hd.seg.SegmentDescription(
                segment_number=len(segments) + 1,
                segment_label="Liver",
                segmented_property_category=codes.SCT.Organ,
                segmented_property_type=codes.SCT.Liver,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
        liver = np.zeros_like(tumour)
        liver[:, 10:120, 10:120] = True
        arrays.append(liver)
    segments.append(
        hd.seg.SegmentDescription(
            segment_number=len(segments) + 1,
            segment_label="Tumor",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
    )
    arrays.append(tumour)
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=np.stack(arrays, axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=generate_uid(),
        series_number=300,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()


def _strip_references(data: bytes) -> bytes:
    """The same SEG without any SOP Instance reference: only frame of reference and positions remain."""
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.ReferencedSeriesSequence
    for groups in ds.PerFrameFunctionalGroupsSequence:
        if "DerivationImageSequence" in groups:
            del groups.DerivationImageSequence
    return to_bytes(ds)


def _assert_masks(outline_masks: dict[int, np.ndarray], expected: np.ndarray) -> None:
    for index in range(len(expected)):
        got = outline_masks.get(index, np.zeros(expected.shape[1:], bool))
        np.testing.assert_array_equal(got, expected[index], err_msg=f"slice {index}")


# ------------------------------------------------------------------------------ DICOM SEG in


def test_multi_frame_seg_by_reference_picks_the_tumour_and_the_largest_slice(study) -> None:
    datasets, _scan, series, tumour = study
    data = _seg(datasets, tumour)
    assert [s.title for s in seg_segments(data)] == ["1: Liver / Liver", "2: Tumor / Neoplasm"]
    outline = import_seg(data, series)
    assert outline.segment == 2 and outline.how == "DICOM SEG, segment 2: Tumor / Neoplasm, matched by SOP Instance UID"
    _assert_masks(outline.masks, tumour)
    assert sorted(outline.masks) == [1, 2, 3]
    assert outline.default_index == 2  # largest tumour area: the paper's rule
    assert outline.areas_px == {1: 120, 2: 1825, 3: 100}
    assert not outline.mask(0).any() and outline.mask(0).shape == (128, 128)


def test_another_segment_can_be_chosen(study) -> None:
    datasets, _scan, series, tumour = study
    liver = import_seg(_seg(datasets, tumour), series, segment=1)
    assert sorted(liver.masks) == [0, 1, 2, 3, 4] and int(liver.masks[0].sum()) == 110 * 110


def test_single_frame_seg_on_one_slice(study) -> None:
    datasets, _scan, series, tumour = study
    only = np.zeros_like(tumour)
    only[3] = tumour[3]
    outline = import_seg(_seg([datasets[3]], only[3:4], with_liver=False), series)
    assert sorted(outline.masks) == [3] and outline.default_index == 3
    np.testing.assert_array_equal(outline.masks[3], tumour[3])


def test_seg_without_references_is_placed_by_frame_of_reference_and_position(study) -> None:
    datasets, _scan, series, tumour = study
    outline = import_seg(_strip_references(_seg(datasets, tumour)), series)
    assert outline.how.endswith("placed by position")
    _assert_masks(outline.masks, tumour)
    assert outline.default_index == 2


def test_seg_of_other_images_is_refused(study) -> None:
    _datasets, _scan, series, _tumour = study
    with open(get_testdata_file("liver_1frame.dcm"), "rb") as handle:
        data = handle.read()
    with pytest.raises(OutlineImportError) as caught:
        import_seg(data, series)
    assert str(caught.value) == (
        "This DICOM SEG belongs to other images: it references none of this series' slices and does not share its "
        "frame of reference; import the segmentation made on this series."
    )


def test_seg_of_another_size_is_refused(study) -> None:
    datasets, _scan, series, tumour = study
    smaller = []
    for ds in datasets:
        copy = pydicom.dcmread(io.BytesIO(to_bytes(ds)), stop_before_pixels=True)
        copy.Rows, copy.Columns = 64, 64
        smaller.append(copy)
    data = _seg(smaller, tumour[:, :64, :64], with_liver=False)
    with pytest.raises(OutlineImportError) as caught:
        import_seg(data, series)
    assert str(caught.value) == (
        "The DICOM SEG's frames are 64×64 pixels but this series' slices are 128×128; import the segmentation made "
        "on this series."
    )


def test_seg_in_the_same_frame_of_reference_at_other_positions_is_refused(study) -> None:
    datasets, _scan, series, tumour = study
    ds = pydicom.dcmread(io.BytesIO(_strip_references(_seg(datasets, tumour))))
    for groups in ds.PerFrameFunctionalGroupsSequence:
        position = groups.PlanePositionSequence[0]
        position.ImagePositionPatient = [
            *position.ImagePositionPatient[:2],
            float(position.ImagePositionPatient[2]) + 2.5,
        ]
    with pytest.raises(OutlineImportError) as caught:
        import_seg(to_bytes(ds), series)
    assert str(caught.value) == (
        "The DICOM SEG's frames lie on none of this series' slices (same frame of reference, other positions); "
        "import the segmentation made on this series."
    )


def test_missing_segment_and_non_seg_files_are_refused(study) -> None:
    datasets, _scan, series, tumour = study
    with pytest.raises(OutlineImportError) as caught:
        import_seg(_seg(datasets, tumour), series, segment=7)
    assert str(caught.value) == "The DICOM SEG has no segment 7; choose one of 1: Liver / Liver, 2: Tumor / Neoplasm."
    with pytest.raises(OutlineImportError) as caught:
        import_seg(to_bytes(datasets[0]), series)
    assert str(caught.value) == "This file is a DICOM CT object, not a DICOM SEG; import a segmentation."
    with pytest.raises(OutlineImportError) as caught:
        import_seg(b"not dicom at all" * 20, series)
    assert str(caught.value) == "This file is not a DICOM SEG (it cannot be read as DICOM)."


def test_seg_imports_onto_a_single_loaded_slice(study) -> None:
    datasets, _scan, _series, tumour = study
    ct = load_slice(to_bytes(datasets[2]))
    outline = import_seg(_seg(datasets, tumour), ct)
    assert sorted(outline.masks) == [0]
    np.testing.assert_array_equal(outline.masks[0], tumour[2])


# ------------------------------------------------------------------------------ NIfTI in


def _nifti(series: SeriesSummary, volume_rc: np.ndarray, *, ras: bool = True, gz: bool = False) -> bytes:
    """A NIfTI of the series' grid as dcm2niix / Slicer write it: voxel (i=col, j=row, k=slice), RAS+ affine."""
    g0 = series.slices[0].geometry
    assert g0 is not None
    step = series.slice_spacing_mm or 1.0
    lps = np.eye(4)
    lps[:3, 0] = np.array(g0.row_direction) * g0.spacing_mm[1]
    lps[:3, 1] = np.array(g0.column_direction) * g0.spacing_mm[0]
    lps[:3, 2] = g0.normal * step
    lps[:3, 3] = g0.position
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps if ras else lps
    image = nib.Nifti1Image(np.transpose(volume_rc, (2, 1, 0)).astype(np.uint8), affine)
    data = image.to_bytes()
    return gzip.compress(data) if gz else data


def test_nifti_with_ras_affine_lands_on_the_right_pixels(study) -> None:
    _datasets, _scan, series, tumour = study
    for gz in (False, True):
        outline = import_nifti(_nifti(series, tumour, gz=gz), series)
        _assert_masks(outline.masks, tumour)
        assert outline.default_index == 2 and outline.how == "NIfTI, label 1, placed by its affine (RAS+)"


def test_nifti_flipped_array_with_matching_affine_is_the_same_outline(study) -> None:
    """A radiological-order array (i flipped) with its affine flipped too: same patient-space mask."""
    _datasets, _scan, series, tumour = study
    image = nib.Nifti1Image.from_bytes(_nifti(series, tumour))
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, image.shape[0] - 1
    flipped = nib.Nifti1Image(np.asanyarray(image.dataobj)[::-1].copy(), image.affine @ flip)
    outline = import_nifti(flipped.to_bytes(), series)
    _assert_masks(outline.masks, tumour)


def test_nifti_with_lps_numbers_in_its_affine_is_refused_not_mirrored(study) -> None:
    _datasets, _scan, series, tumour = study
    with pytest.raises(OutlineImportError) as caught:
        import_nifti(_nifti(series, tumour, ras=False), series)
    assert "(or its affine is not in RAS+ coordinates)" in str(caught.value)


def test_nifti_label_map_defaults_to_the_highest_label(study) -> None:
    _datasets, _scan, series, tumour = study
    labels = np.zeros(tumour.shape, np.uint8)
    labels[:, 10:120, 10:120] = 1  # liver
    labels[tumour] = 2  # tumour, LiTS / MSD style
    data = _nifti(series, labels)
    assert [s.number for s in nifti_labels(data)] == [1, 2]
    _assert_masks(import_nifti(data, series).masks, tumour)
    assert int(import_nifti(data, series, label=1).masks[0].sum()) == 110 * 110
    with pytest.raises(OutlineImportError) as caught:
        import_nifti(data, series, label=3)
    assert str(caught.value) == "The NIfTI outline has no label 3; its labels are 1, 2."


def test_resampled_nifti_is_refused(study) -> None:
    _datasets, _scan, series, tumour = study
    image = nib.Nifti1Image.from_bytes(_nifti(series, tumour))
    half = nib.Nifti1Image(np.asanyarray(image.dataobj)[::2, ::2], image.affine @ np.diag([2.0, 2.0, 1.0, 1.0]))
    with pytest.raises(OutlineImportError) as caught:
        import_nifti(half.to_bytes(), series)
    assert str(caught.value) == (
        "The NIfTI outline is on another pixel grid than this series (other pixel size or orientation) (or its affine "
        "is not in RAS+ coordinates); import the one made on this series, not a resampled copy."
    )


def test_nifti_elsewhere_and_without_orientation_are_refused(study) -> None:
    _datasets, _scan, series, tumour = study
    image = nib.Nifti1Image.from_bytes(_nifti(series, tumour))
    moved = image.affine.copy()
    moved[2, 3] += 500.0  # half a metre up the table
    with pytest.raises(OutlineImportError) as caught:
        import_nifti(nib.Nifti1Image(np.asanyarray(image.dataobj), moved).to_bytes(), series)
    assert str(caught.value) == (
        "The NIfTI outline does not overlap this series' slices (or its affine is not in RAS+ coordinates); import "
        "the outline made on this series."
    )
    bare = nib.Nifti1Image(np.asanyarray(image.dataobj), None)
    bare.header.set_sform(None, code=0)
    bare.header.set_qform(None, code=0)
    with pytest.raises(OutlineImportError) as caught:
        import_nifti(bare.to_bytes(), series)
    assert str(caught.value).startswith("The NIfTI file does not say where its voxels lie (no qform or sform)")
    with pytest.raises(OutlineImportError) as caught:
        import_nifti(b"\0" * 400, series)
    assert str(caught.value).startswith("This file is not a NIfTI image")


def test_nifti_bomb_is_refused(study, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.segmentation as segmentation

    _datasets, _scan, series, _tumour = study
    monkeypatch.setattr(segmentation, "MAX_TOTAL_BYTES", 1024**2)
    with pytest.raises(OutlineImportError) as caught:
        import_nifti(gzip.compress(b"\0" * (4 * 1024**2)), series)
    assert str(caught.value) == "The .nii.gz file expands to more than this tool reads; export the tumour mask alone."


# ------------------------------------------------------------------------------ PNG in


def test_png_mask_of_the_slice_size() -> None:
    mask = np.zeros((128, 128), bool)
    mask[20:40, 30:90] = True
    np.testing.assert_array_equal(import_png_mask(export_png(mask), (128, 128)), mask)
    rgba = np.zeros((128, 128, 4), np.uint8)
    rgba[..., 3][mask] = 255  # a mask drawn only in the alpha channel
    _ok, encoded = cv2.imencode(".png", rgba)
    np.testing.assert_array_equal(import_png_mask(encoded.tobytes(), (128, 128)), mask)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (
            np.full((64, 64), 255, np.uint8),
            "The PNG mask is 64×64 pixels but the slice is 128×128; export the mask at the slice's own size.",
        ),
        (np.zeros((128, 128), np.uint8), "The PNG mask is empty (every pixel is 0); check the file."),
        (
            np.full((128, 128), 255, np.uint8),
            "The PNG mask marks every pixel; export a mask whose background is black (0).",
        ),
    ],
    ids=["size", "empty", "all"],
)
def test_png_mask_refusals(image: np.ndarray, message: str) -> None:
    _ok, encoded = cv2.imencode(".png", image)
    with pytest.raises(OutlineImportError) as caught:
        import_png_mask(encoded.tobytes(), (128, 128))
    assert str(caught.value) == message


# ------------------------------------------------------------------------------ export


def test_exported_seg_reads_back_exactly_and_references_its_slice(study) -> None:
    _datasets, scan, series, tumour = study
    loaded = load_series_slice(scan, series.key, 2)
    ref = loaded.ct.source_ref
    assert ref is not None
    # the record survives a round trip through plain JSON types (what the page keeps)
    ref = reference_from_dict(ref.as_dict())
    data = export_seg(tumour[2], ref)
    seg = hd.seg.segread(io.BytesIO(data))
    pixels = seg.get_pixels_by_source_instance([ref.sop_uid], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), tumour[2])
    assert seg.get_source_image_uids() == [(ref.study_uid, ref.series_uid, ref.sop_uid)]
    assert seg.StudyInstanceUID == ref.study_uid and seg.FrameOfReferenceUID == ref.frame_of_reference_uid
    position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    assert [float(v) for v in position] == pytest.approx(list(ref.geometry.position))
    assert str(seg.PatientName) == "" and seg.PatientID == "" and seg.PatientBirthDate == ""
    description = seg.get_segment_description(1)
    assert description.segment_label == "Tumour" and description.segmented_property_type.meaning == "Neoplasm"
    # and the app imports its own export back onto the series
    back = import_seg(data, series)
    assert sorted(back.masks) == [2]
    np.testing.assert_array_equal(back.masks[2], tumour[2])


def test_export_refusals(study) -> None:
    _datasets, scan, series, tumour = study
    ref = load_series_slice(scan, series.key, 2).ct.source_ref
    assert ref is not None
    with pytest.raises(RoiError, match=r"^The outline is empty; draw or import one before exporting it\.$"):
        export_seg(np.zeros((128, 128), bool), ref)
    with pytest.raises(OutlineImportError) as caught:
        export_seg(np.ones((64, 64), bool), ref)
    assert str(caught.value) == (
        "The outline is 64×64 pixels but the slice is 128×128; export it from the slice it was drawn on."
    )
    bare = SourceReference(ref.study_uid, ref.series_uid, ref.sop_uid, ref.sop_class_uid, None, None, None)
    with pytest.raises(OutlineImportError) as caught:
        export_seg(tumour[2], bare)
    assert str(caught.value) == (
        "This slice's header lacks its position or frame of reference, so a DICOM SEG cannot be placed on it; "
        "export the outline as PNG."
    )


def test_exported_png_is_the_mask() -> None:
    mask = np.zeros((100, 120), bool)
    mask[10:30, 5:50] = True
    decoded = cv2.imdecode(np.frombuffer(export_png(mask), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (100, 120) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded == 255, mask)
    assert set(np.unique(decoded)) == {0, 255}


def test_nifti_with_a_singular_affine_is_one_sentence(study) -> None:
    _datasets, _scan, series, tumour = study
    data = bytearray(_nifti(series, tumour))
    struct.pack_into("<hh", data, 252, 0, 1)  # qform_code 0, sform_code 1 …
    struct.pack_into("<12f", data, 280, *([0.0] * 12))  # … and an all-zero sform
    with pytest.raises(OutlineImportError) as caught:
        import_nifti(bytes(data), series)
    assert str(caught.value) == (
        "The NIfTI file's geometry (its affine) cannot be inverted, so it cannot be placed on this series; re-export "
        "it from the segmentation tool."
    )
