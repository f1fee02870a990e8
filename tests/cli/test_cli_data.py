"""``t5kit data import ddtp`` on an apt lists directory written in code."""

from __future__ import annotations

import json

import pytest

from t5kit.cli import main


def test_import_ddtp_command(tmp_path, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    en, fr, pkgs = [], [], []
    for i in range(30):
        md5 = f"{i:032x}"
        en.append(f"Package: p{i}\nDescription-md5: {md5}\nDescription-en: tool {i}\n Tool {i} does things.\n")
        fr.append(f"Package: p{i}\nDescription-md5: {md5}\nDescription-fr: outil {i}\n L'outil {i} fait des choses.\n")
        pkgs.append(f"Package: p{i}\nSection: {'net' if i % 3 else 'games'}\nDescription-md5: {md5}\n")
    (lists / "a_i18n_Translation-en").write_text("\n".join(en), encoding="utf-8")
    (lists / "a_i18n_Translation-fr").write_text("\n".join(fr), encoding="utf-8")
    (lists / "a_binary-amd64_Packages").write_text("\n".join(pkgs), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["data", "import", "ddtp", "--out", str(out), "--lang", "fr", "--lists-dir", str(lists)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert sum(shown["records"]["en-fr"].values()) == 60  # a synopsis and a paragraph per description
    assert shown["sections"] == 2 and "by source package" in shown["split"]
    assert json.loads((out / "manifest.json").read_text())["records"] == shown["records"]
    with pytest.raises(SystemExit):  # --lists-dir and --out are checked by argparse
        main(["data", "import", "ddtp"])


def test_import_ddtp_missing_lists_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "lists").mkdir()
    code = main(["data", "import", "ddtp", "--out", str(tmp_path / "o"), "--lists-dir", str(tmp_path / "lists")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "no Translation-en index files" in err and "apt-get update -o Acquire::Languages=en" in err
