"""The published files: Clotho v2.1 and the DCASE splits on Zenodo, and the PANNs CNN14 checkpoint (facts, no logic).

The file names, Zenodo records and MD5 values of the splits are those aac-datasets publishes
(``aac_datasets/datasets/functional/clotho.py``, ``_CLOTHO_LINKS["v2.1"]``), copied here as data. Sizes serve only
the free-space check (the MD5 is what verifies a file): those of the development and validation files are the
Zenodo record's, as quoted with the same MD5s in a public download manifest; the other sizes are estimates.
The PANNs size, MD5 and SHA-256 are publicly quoted values (the MD5 with the same size in several public
download tables); all three are checked, but they could not be confirmed from Zenodo record 3987831 here.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

ZENODO = "https://zenodo.org/record"
CLOTHO, TEST, RETRIEVAL, PANNS_RECORD = "4783391", "3865658", "6590983", "3987831"


@dataclass(frozen=True)
class RemoteFile:
    """One published file."""

    name: str  # its name on Zenodo, on a mirror, in --from DIR and on disk
    record: str  # Zenodo record id
    md5: str | None  # published MD5 (None: not published)
    approx_size: int  # bytes, for the free-space check
    size: int | None = None  # exact bytes, checked
    sha256: str | None = None  # checked when given

    @property
    def url(self) -> str:
        return f"{ZENODO}/{self.record}/files/{quote(self.name)}?download=1"  # as aac-datasets links them


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split and where its clips go."""

    archive: RemoteFile
    folder: str  # dataset_dir/<folder>/ receives the wav files
    tables: tuple[RemoteFile, ...]  # CSVs, saved as dataset_dir/<name>
    listing: str  # the CSV whose file_name column names every clip


def _clotho(split: str, md5s: tuple[str, str, str], sizes: tuple[int, int, int]) -> SplitFiles:
    names = (f"clotho_audio_{split}.7z", f"clotho_captions_{split}.csv", f"clotho_metadata_{split}.csv")
    archive, *tables = (RemoteFile(n, CLOTHO, m, s) for n, m, s in zip(names, md5s, sizes, strict=True))
    return SplitFiles(archive, split, tuple(tables), names[2])


SPLITS: dict[str, SplitFiles] = {
    "development": _clotho("development", ("c8b05bc7acdb13895bb3c6a29608667e", "d4090b39ce9f2491908eebf4d5b09bae",
                                           "170d20935ecfdf161ce1bb154118cda5"), (4_541_582_263, 1_336_762, 830_797)),
    "validation": _clotho("validation", ("7dba730be08bada48bd15dc4e668df59", "5879e023032b22a2c930aaa0528bead4",
                                         "2e010427c56b1ce6008b0f03f41048ce"), (1_260_701_425, 367_649, 224_803)),
    "evaluation": _clotho("evaluation", ("4569624ccadf96223f19cb59fe4f849f", "1b16b9e57cf7bdb7f13a13802aeb57e2",
                                         "13946f054d4e1bf48079813aac61bf77"), (1_300_000_000, 370_000, 230_000)),
    "test": SplitFiles(  # the DCASE audio-captioning test clips, no captions
        RemoteFile("clotho_audio_test.7z", TEST, "9b3fe72560a621641ff4351ba1154349", 1_300_000_000), "test",
        (RemoteFile("clotho_metadata_test.csv", TEST, "52f8ad01c229a310a0ff8043df480e21", 230_000),),
        "clotho_metadata_test.csv"),
    "retrieval": SplitFiles(  # the DCASE language-based retrieval clips and query captions (unpaired)
        RemoteFile("retrieval_audio.7z", RETRIEVAL, "24102395fd757c462421a483fba5c407", 1_300_000_000),
        "retrieval_audio",
        (RemoteFile("retrieval_audio_metadata.csv", RETRIEVAL, "1301db07acbf1e4fabc467eb54e0d353", 230_000),
         RemoteFile("retrieval_captions.csv", RETRIEVAL, "f9e810118be00c64ea8cd7557816d4fe", 100_000)),
        "retrieval_audio_metadata.csv"),
}
DEFAULT_SPLITS = ("development", "validation", "evaluation")  # what the baseline trains and evaluates on
PANNS = RemoteFile("Cnn14_mAP=0.431.pth", PANNS_RECORD, "541141fa2ee191a88f24a3219fff024e", 327_428_481,
                   size=327_428_481, sha256="0dc499e40e9761ef5ea061ffc77697697f277f6a960894903df3ada000e34b31")
