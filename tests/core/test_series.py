"""Series grouping, ordering, summaries and slice loading (core.series), from real CT headers."""

from __future__ import annotations

import copy
import io
import math

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from core.dicomref import uid_hash
from core.errors import UploadRefusedError, UserFacingError
from core.imaging import window_presets
from core.series import contrast_of, decode_report, find_slice, load_series_slice, scan_upload, series_label
from tests.core.ct_series import as_files, original_hu, series_datasets, to_bytes, zip_of


def _testdata(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as handle:
        return handle.read()


def _two_series_zip() -> bytes:
    plain = as_files(series_datasets(6, description="Plain abdomen 5mm", z0=-120.0, dz=5.0), "DICOM/S1/IM", seed=3)
    portal = as_files(series_datasets(4, description="Portal venous", contrast=True, dz=2.5), "DICOM/S2/IM", seed=4)
    mixed = plain + portal
    order = np.random.default_rng(5).permutation(len(mixed))
    return zip_of([mixed[i] for i in order])


def test_a_zip_of_two_shuffled_series_is_grouped_and_sorted_by_position() -> None:
    scan = scan_upload([("export.zip", _two_series_zip())])
    assert len(scan.series) == 2 and len(scan.ct_series) == 2 and scan.others == ()
    by_name = {s.description: s for s in scan.series}
    plain, portal = by_name["Plain abdomen 5mm"], by_name["Portal venous"]
    assert plain.slice_count == 6 and portal.slice_count == 4
    assert [e.position_mm for e in plain.slices] == pytest.approx([-120, -115, -110, -105, -100, -95])
    # InstanceNumber runs the other way and file names are shuffled: neither decided the order
    assert [e.instance_number for e in plain.slices] == [6, 5, 4, 3, 2, 1]
    assert plain.sorted_by == "position" and plain.notes == ()
    assert plain.slice_spacing_mm == 5.0 and portal.slice_spacing_mm == 2.5
    assert plain.slice_thickness_mm == 5.0 and plain.kernel == "STANDARD"
    assert (plain.rows, plain.columns) == (128, 128) and plain.pixel_spacing_mm == pytest.approx((0.661468, 0.661468))
    assert plain.compression == "uncompressed (explicit VR little endian)" and plain.decodable and plain.lossy is None
    assert not plain.contrast_given and plain.contrast_warning() is None
    assert portal.contrast_given and portal.contrast_evidence == "ContrastBolusAgent is 'ISOVUE300/100'"
    assert portal.contrast_warning() == (
        "This series was taken with contrast (ContrastBolusAgent is 'ISOVUE300/100'); the model was trained on plain "
        "(non-contrast) CT, so choose the plain series if there is one."
    )
    assert plain.key == uid_hash(plain.series_uid) and plain.series_uid not in str(plain.as_dict())


def test_scanning_reads_headers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: pydicom.Dataset) -> None:
        raise AssertionError("pixel data decoded while scanning")

    upload = [("export.zip", _two_series_zip())]
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(refuse))
    assert len(scan_upload(upload).series) == 2


def test_loading_a_slice_gives_its_hu_position_and_source() -> None:
    scan = scan_upload([("export.zip", _two_series_zip())])
    plain = next(s for s in scan.series if s.description.startswith("Plain"))
    for index in (0, 3, 5):
        loaded = load_series_slice(scan, plain.key, index)
        # slice k (in position order) holds original + k HU
        np.testing.assert_array_equal(loaded.ct.pixels, original_hu() + index)
        assert loaded.position_mm == pytest.approx(-120 + 5 * index) and loaded.index == index
        ref = loaded.ct.source_ref
        assert ref is not None and ref.sop_uid == plain.slices[index].sop_uid and ref.series_uid == plain.series_uid
        assert ref.geometry is not None and ref.geometry.offset_mm == pytest.approx(loaded.position_mm)
        assert "Patient" not in str(ref.as_dict()) and loaded.ct.patient_id == "1CT1"  # the ID stays out of the record


def test_oblique_and_coronal_series_sort_along_their_own_normal() -> None:
    tilt = math.radians(30)
    oblique = [1.0, 0.0, 0.0, 0.0, math.cos(tilt), math.sin(tilt)]
    coronal = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    for orientation in (oblique, coronal):
        datasets = series_datasets(5, orientation=orientation, z0=10.0, dz=3.0)
        series = scan_upload(as_files(datasets, seed=7)).series[0]
        assert [e.position_mm for e in series.slices] == pytest.approx([10, 13, 16, 19, 22], abs=1e-3)
        assert [e.sop_uid for e in series.slices] == [ds.SOPInstanceUID for ds in datasets]


def test_missing_positions_fall_back_to_instance_number_and_say_so() -> None:
    datasets = series_datasets(4)
    del datasets[2].ImagePositionPatient
    series = scan_upload(as_files(datasets)).series[0]
    assert series.sorted_by == "instance number"
    assert [e.instance_number for e in series.slices] == [1, 2, 3, 4]
    assert all(e.position_mm is None for e in series.slices)
    assert series.notes == (
        "1 of 4 slices have no usable ImagePositionPatient / ImageOrientationPatient, so the series is ordered by "
        "InstanceNumber and slice positions are unknown.",
    )


def test_the_same_file_twice_is_kept_once() -> None:
    files = as_files(series_datasets(3))
    series = scan_upload([*files, ("copy-of-first", files[0][1])]).series[0]
    assert series.slice_count == 3
    assert series.notes == ("1 repeated file(s) of the same slice were ignored.",)


def test_two_slices_at_one_position_are_both_kept_and_noted() -> None:
    datasets = series_datasets(3)
    again = copy.deepcopy(datasets[1])
    again.SOPInstanceUID = generate_uid()
    again.file_meta.MediaStorageSOPInstanceUID = again.SOPInstanceUID
    again.InstanceNumber = 10
    series = scan_upload(as_files([*datasets, again])).series[0]
    assert series.slice_count == 4
    assert [e.instance_number for e in series.slices] == [3, 2, 10, 1]
    assert series.notes == (
        "2 slices share a position with another slice (two acquisitions in one series?); at each such position "
        "they are ordered by InstanceNumber.",
    )


def test_slices_of_another_size_become_their_own_part() -> None:
    datasets = series_datasets(4)
    scout = copy.deepcopy(datasets[0])
    scout.SOPInstanceUID = generate_uid()
    small = np.ascontiguousarray(scout.pixel_array[::2, ::2])
    scout.Rows, scout.Columns = 64, 64
    scout.PixelData = small.tobytes()
    scout.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    scan = scan_upload(as_files([*datasets, scout]))
    main, part = scan.series
    assert main.slice_count == 4 and part.slice_count == 1
    assert part.key == main.key + "-2" and part.description.endswith("(part 2)")
    assert main.notes == ("Part 1 of 2 of this series: its slices of one size and orientation (128×128).",)
    assert load_series_slice(scan, part.key, 0).ct.shape == (64, 64)


def test_an_oversized_ct_image_refuses_the_upload_before_decoding() -> None:
    big = series_datasets(1)[0]
    big.Rows, big.Columns = 5000, 5000  # header only: the pixel data is never looked at
    with pytest.raises(UploadRefusedError) as caught:
        scan_upload([("huge.dcm", to_bytes(big))])
    assert str(caught.value) == (
        "The CT image 'huge.dcm' is 5000×5000 pixels, larger than 4096 px a side, so the upload was not read; "
        "export the series at its original size."
    )


def test_non_ct_files_are_listed_and_outlines_offered() -> None:
    _ok, png = cv2.imencode(".png", np.zeros((128, 128), np.uint8))
    files = [
        *as_files(series_datasets(2)),
        ("mr.dcm", _testdata("MR_small.dcm")),
        ("seg.dcm", _testdata("liver_1frame.dcm")),
        ("rt.dcm", _testdata("rtstruct.dcm")),
        ("report.dcm", _testdata("test-SR.dcm")),
        ("mask.png", png.tobytes()),
        ("notes.txt", b"hello"),
    ]
    scan = scan_upload(files)
    assert [s.modality for s in scan.series] == ["CT", "MR"]
    assert scan.series[1].unusable == "This series is an MR series; a CT is needed."
    assert [s.modality for s in scan.ct_series] == ["CT"]
    assert [(o.name, o.what) for o in scan.segmentations] == [
        ("seg.dcm", "a DICOM segmentation (SEG)"),
        ("mask.png", "a PNG image"),
    ]
    ignored = {o.name: o.what for o in scan.others if not o.importable}
    assert ignored == {
        "notes.txt": "not a DICOM, NIfTI or PNG file",
        "report.dcm": "a DICOM structured report (SR)",
        "rt.dcm": "an RT structure set (RTSTRUCT)",
    }
    with pytest.raises(UserFacingError, match="an MR series; a CT is needed"):
        load_series_slice(scan, scan.series[1].key, 0)


def test_an_upload_without_images_is_refused() -> None:
    with pytest.raises(UploadRefusedError) as caught:
        scan_upload([("notes.txt", b"hello"), ("rt.dcm", _testdata("rtstruct.dcm"))])
    assert str(caught.value) == (
        "The upload holds no DICOM image (found: an RT structure set (RTSTRUCT), not a DICOM, NIfTI or PNG file); "
        "upload the CT series exported from the PACS."
    )


def test_multi_frame_ct_is_listed_but_not_loadable() -> None:
    ds = series_datasets(1)[0]
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    scan = scan_upload([("enhanced.dcm", to_bytes(ds))])
    expected = (
        "This series is stored as one multi-frame (enhanced) CT object; export it from the PACS as single-frame CT "
        "images."
    )
    assert scan.series[0].unusable == expected and scan.ct_series == ()
    with pytest.raises(UserFacingError) as caught:
        load_series_slice(scan, scan.series[0].key, 0)
    assert str(caught.value) == expected


def test_a_series_without_uid_is_still_listed() -> None:
    datasets = series_datasets(2)
    for ds in datasets:
        del ds.SeriesInstanceUID
    assert scan_upload(as_files(datasets)).series[0].key == "no-series-uid"


@pytest.mark.parametrize(
    ("tags", "description", "given", "evidence"),
    [
        ({}, "Abdomen C+ portal", True, "the description 'Abdomen C+ portal' mentions 'C+'"),
        ({}, "造影 動脈相", True, "the description '造影 動脈相' mentions '造影'"),
        ({}, "単純CT 5mm", False, "the description '単純CT 5mm' says plain and no contrast tag is set"),
        (
            {"ContrastBolusAgent": "NONE"},
            "Abdomen",
            False,
            "no contrast tag is set and the description does not mention contrast",
        ),
        ({"ContrastBolusRoute": "IV"}, "Abdomen", True, "ContrastBolusRoute is 'IV'"),
        # "C-A-P" is chest-abdomen-pelvis, and a phase word wins over a "plain" word beside it
        ({}, "C-A-P PORTAL 5mm", True, "the description 'C-A-P PORTAL 5mm' mentions 'PORTAL'"),
        ({}, "CT ABD/PELVIC-PORTAL VENOUS", True, "the description 'CT ABD/PELVIC-PORTAL VENOUS' mentions 'PORTAL'"),
        ({}, "Thoracic-Abdomen arterial", True, "the description 'Thoracic-Abdomen arterial' mentions 'arterial'"),
        ({}, "ABD C- 5mm", False, "the description 'ABD C- 5mm' says plain and no contrast tag is set"),
        (
            {},
            "Non-contrast abdomen",
            False,
            "the description 'Non-contrast abdomen' says plain and no contrast tag is set",
        ),
        (
            {"ContrastBolusVolume": "0"},
            "Abdomen",
            False,
            "no contrast tag is set and the description does not mention contrast",
        ),
        (
            {"ContrastBolusAgent": "Omnipaque"},
            "Plain",
            True,
            "ContrastBolusAgent is 'Omnipaque' although the description says plain",
        ),
    ],
)
def test_contrast_detection(tags: dict[str, str], description: str, given: bool, evidence: str) -> None:
    ds = series_datasets(1, description=description)[0]
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    assert contrast_of(ds) == (given, evidence)


def test_a_saved_case_finds_its_slice_again_by_hash() -> None:
    scan = scan_upload([("export.zip", _two_series_zip())])
    series = scan.series[1]
    ref = load_series_slice(scan, series.key, 2).ct.source_ref
    assert ref is not None
    secret = b"installation secret"
    hashed = ref.hashed(secret)
    assert ref.sop_uid not in str(hashed) and ref.series_uid not in str(hashed)
    assert find_slice(scan, hashed, secret) == (series.key, 2)
    assert find_slice(scan, hashed, b"another installation") is None


def test_the_file_window_is_offered_as_a_preset() -> None:
    datasets = series_datasets(2)
    for ds in datasets:
        ds.WindowCenter, ds.WindowWidth = ["40", "60"], ["400", "160"]
    scan = scan_upload(as_files(datasets))
    assert scan.series[0].window == (40.0, 400.0)
    ct = load_series_slice(scan, scan.series[0].key, 0).ct
    assert ct.file_window == (40.0, 400.0)
    presets = window_presets(ct)
    assert list(presets)[-1] == "From the file (L40 / W400)" and presets["From the file (L40 / W400)"] == (40.0, 400.0)
    assert "Liver (L60 / W160)" in presets


def test_decode_report_gives_hu_range_and_status() -> None:
    scan = scan_upload(as_files(series_datasets(3)))
    report = decode_report(scan, scan.series[0].key)
    assert report == {
        "decoded": 3,
        "failed": 0,
        "status": "ok",
        "hu_min": float(original_hu().min()),
        "hu_max": float(original_hu().max() + 2),
    }


def test_a_damaged_slice_is_reported_not_raised() -> None:
    files = as_files(series_datasets(3))
    name, data = files[0]
    files[0] = (name, data[: len(data) - 5000])
    scan = scan_upload(files)
    report = decode_report(scan, scan.series[0].key)
    assert report["decoded"] == 2 and report["failed"] == 1 and "pixel data is incomplete" in report["status"]


def test_bad_series_key_or_index_is_one_sentence() -> None:
    scan = scan_upload(as_files(series_datasets(3)))
    with pytest.raises(UserFacingError, match=r"^That series is not in this upload; choose one from the list\.$"):
        load_series_slice(scan, "u-nope", 0)
    with pytest.raises(UserFacingError, match=r"^This series has 3 slices; choose one between 1 and 3\.$"):
        load_series_slice(scan, scan.series[0].key, 3)


def test_compressed_series_report_their_compression() -> None:
    from pydicom.uid import JPEG2000Lossless

    datasets = series_datasets(2)
    for ds in datasets:
        ds.compress(JPEG2000Lossless)
    scan = scan_upload(as_files(datasets))
    assert scan.series[0].compression == "JPEG 2000 lossless" and scan.series[0].lossy is None
    np.testing.assert_array_equal(load_series_slice(scan, scan.series[0].key, 1).ct.pixels, original_hu() + 1)
    assert io  # keep import for readers


def test_the_picker_says_plain_only_on_evidence() -> None:
    from dataclasses import replace

    scan = scan_upload([("export.zip", _two_series_zip())])
    by_name = {s.description: s for s in scan.series}
    plain, portal = by_name["Plain abdomen 5mm"], by_name["Portal venous"]
    assert series_label(plain).endswith(" · plain") and series_label(portal).endswith(" · CONTRAST")
    unrecorded = replace(
        plain,
        description="Abdomen 5mm",
        contrast_evidence=contrast_of(series_datasets(1, description="Abdomen 5mm")[0])[1],
    )
    assert series_label(unrecorded).endswith(" · contrast not recorded")


@pytest.mark.parametrize(
    "description",
    [
        "ABDOMEN W/O CONTRAST",
        "CT ABDOMEN WITHOUT CONTRAST",
        "WO CONTRAST",
        "W/O IV contrast",
        "Non-Contrast Enhanced",
        "native ohne KM",
        "NECT abdomen",
        "NON-CON 5mm",
        "No contrast",
        "CAP C-",
        "ABD(C-)",
    ],
)
def test_a_negated_contrast_word_says_plain(description: str) -> None:
    """The commonest plain-CT descriptions name contrast only to negate it: never a contrast warning."""
    given, evidence = contrast_of(series_datasets(1, description=description)[0])
    assert not given and evidence.endswith("says plain and no contrast tag is set")


def test_what_a_page_keeps_of_a_zip_is_its_ct_slices_and_outlines() -> None:
    """read_upload: the CT slices and the SEG stay loadable; an MR slice and an RT file lose their data."""
    from core.series import read_upload
    from tests.core.test_segmentation import _seg

    datasets = series_datasets(3)
    tumour = np.zeros((3, 128, 128), bool)
    tumour[1, 40:80, 40:90] = True
    mr = _testdata("MR_small.dcm")
    archive = zip_of(
        [
            *as_files(datasets),
            ("outline.dcm", _seg(datasets, tumour)),
            ("mr.dcm", mr),
            ("rt.dcm", _testdata("rtstruct.dcm")),
        ]
    )
    contents = read_upload([("export.zip", archive)])
    assert contents.export is None and contents.scan is not None
    scan = contents.scan
    kept = {item.name: len(item.data) for item in scan.files}
    assert kept["mr.dcm"] == 0 and kept["rt.dcm"] == 0
    assert all(kept[name] > 0 for name, _ in as_files(datasets)) and kept["outline.dcm"] > 0
    np.testing.assert_array_equal(load_series_slice(scan, scan.ct_series[0].key, 2).ct.pixels, original_hu() + 2)
    assert [o.name for o in scan.segmentations] == ["outline.dcm"]
    assert scan.file_bytes(scan.segmentations[0].file_index)[:132].endswith(b"DICM")


def test_a_png_export_is_read_as_its_slice() -> None:
    from core.series import read_upload

    grey = np.tile(np.arange(64, dtype=np.uint8), (48, 1))
    ok, png = cv2.imencode(".png", grey)
    assert ok
    contents = read_upload([("export.png", png.tobytes())])
    assert contents.scan is None and contents.export is not None
    assert contents.export.source_kind == "png" and contents.export.shape == (48, 64)
    with pytest.raises(UserFacingError):
        read_upload([("export.png", png.tobytes()[:40])])
