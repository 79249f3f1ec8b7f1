"""The DICOMweb benchmark's arithmetic: per-round ratios, medians, target verdicts."""

from bench.dicomweb_report import Rounds, federated_line, ratios, table, verdict


def test_ratios_medians_and_verdicts() -> None:
    rounds = Rounds()
    for mine, theirs in ((2.0, 4.0), (3.0, 3.0), (8.0, 4.0)):
        rounds.add("medfed", "qido_studies_p50", mine)
        rounds.add("orthanc", "qido_studies_p50", theirs)
    rounds.add("medfed", "wado_series", 500.0)
    rounds.add("orthanc", "wado_series", 400.0)
    assert ratios(rounds, "qido_studies_p50") == [0.5, 1.0, 2.0]
    text = table(rounds)
    assert "| QIDO-RS studies, p50 | ms | 3.0 | 4.0 | 1.00x | 0.50x, 1.00x, 2.00x | met" in text
    assert "| WADO-RS series as a byte stream | MB/s | 500 | 400 | 1.25x |" in text
    assert "rendered" not in text                     # no figures, no row
    assert verdict(0.6, "lower", 0.5).startswith("NOT MET")
    assert verdict(0.9, "higher", 1.0).startswith("NOT MET")
    assert verdict(None, "lower", 1.0) == ""
    assert "| 150.0 ms |" in federated_line(150.0, 300.0, 20.0, 7, "ok=7")
    assert "| met |" in federated_line(179.0, 300.0, 20.0, 7, "ok=7")
    assert "NOT MET" in federated_line(181.0, 300.0, 20.0, 7, "ok=7")
