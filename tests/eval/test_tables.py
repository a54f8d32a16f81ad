import math

from coz_train.eval.tables import Results, markdown, read_csv, write_csv


def test_rows_csv_and_markdown_for_known_values(tmp_path):
    results = Results()
    for value in (1.0, 3.0):
        results.add("bicubic", 4, "niqe", value)
    results.add("coz", 4, "niqe", 1.5)
    results.add("bicubic", 16, "niqe", 9.0)
    results.add("coz", 16, "niqe", 7.0)
    results.add("coz", 4, "psnr", math.inf)  # identical images
    results.add("coz", 16, "niqe", math.nan)  # undefined for one image: not in the mean, not in n
    results.add("coz", 16, "psnr", math.nan)  # never defined: no row
    rows = {(r.method, r.scale, r.metric): r for r in results.rows()}
    assert (rows[("bicubic", 4, "niqe")].mean, rows[("bicubic", 4, "niqe")].std, rows[("bicubic", 4, "niqe")].n) == (2.0, 1.0, 2)
    assert rows[("coz", 4, "psnr")].mean == math.inf
    assert rows[("coz", 16, "niqe")].n == 1 and ("coz", 16, "psnr") not in rows

    path = tmp_path / "results.csv"
    write_csv(list(rows.values()), path)
    assert path.read_text().splitlines()[0] == "method,scale,metric,mean,std,n"
    assert {(r.method, r.scale, r.metric, r.mean, r.n) for r in read_csv(path)} == {
        (r.method, r.scale, r.metric, r.mean, r.n) for r in rows.values()
    }

    md = markdown(list(rows.values()), {"niqe": False, "psnr": True}, {"musiq": "weights could not be downloaded"},
                  ["bicubic", "coz"], [4, 16])
    assert "| coz | **1.5 (1)** | **7 (1)** |" in md  # lower NIQE is better; n shown as counts differ
    assert "| bicubic | 2 (2) | 9 (1) |" in md
    assert "- musiq: weights could not be downloaded" in md
    assert "| coz | **inf** | - |" in md
