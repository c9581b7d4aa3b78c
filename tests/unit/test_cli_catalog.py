"""`portcullis regions` and `portcullis domains`: output shapes and exit codes."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner, Result

from portcullis.cli import EXIT_OK, EXIT_USAGE, main

REGIONS_TEXT = """\
REGION    NAME        REGISTRY    DEPRECATED                   LISTED
global    Global      icr.io      registry.bluemix.net         2019-09-25
jp-tok    AP North    jp.icr.io   -                            2019-10-28
au-syd    AP South    au.icr.io   registry.au-syd.bluemix.net  2019-10-28
eu-de     EU Central  de.icr.io   registry.eu-de.bluemix.net   2019-10-28
eu-es     Madrid      es.icr.io   -                            2024-03-14
ca-mon    Montreal    ca2.icr.io  -                            2025-07-29
jp-osa    Osaka       jp2.icr.io  -                            2021-02-15
br-sao    Sao Paolo   br.icr.io   -                            2021-08-27
ca-tor    Toronto     ca.icr.io   -                            2021-05-10
eu-gb     UK South    uk.icr.io   registry.eu-gb.bluemix.net   2019-10-28
us-south  US South    us.icr.io   registry.ng.bluemix.net      2019-09-25
in-che    Chennai     in.icr.io   -                            2026-02-09
in-mum    Mumbai      in2.icr.io  -                            2026-05-18
"""

US_SOUTH = [
    "us.icr.io",
    "registry.ng.bluemix.net",
    "dd0.icr.io",
    "dd2.icr.io",
    "dd0.us.icr.io",
]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_regions_text_is_the_doc_table() -> None:
    result = run("regions")
    assert result.exit_code == EXIT_OK
    assert result.stdout == REGIONS_TEXT
    assert run("regions", "--registry", "icr").stdout == REGIONS_TEXT


def test_regions_json() -> None:
    result = run("regions", "--format", "json")
    assert result.exit_code == EXIT_OK
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows][-2:] == ["in-che", "in-mum"]
    assert rows[-1]["added"] == "2026-05-18" and rows[0]["added"] == "2019-09-25"
    assert rows[10] == {
        "id": "us-south",
        "name": "US South",
        "aliases": ["Dallas"],
        "registry": ["us.icr.io"],
        "deprecated": ["registry.ng.bluemix.net"],
        "added": "2019-09-25",
    }


def test_regions_of_a_registry_without_regions() -> None:
    result = run("regions", "--registry", "docker")
    assert result.exit_code == EXIT_OK
    assert result.stdout == ""
    assert "docker-hub has no regions" in result.stderr
    assert json.loads(run("regions", "--registry", "docker", "--format", "json").stdout) == []


def test_regions_unknown_registry() -> None:
    result = run("regions", "--registry", "harbor")
    assert result.exit_code == EXIT_USAGE
    assert "unknown registry catalog 'harbor'" in result.stderr
    assert "ibm-container-registry" in result.stderr


def test_domains_text_one_name_per_line() -> None:
    result = run("domains", "--registry", "ibm", "--region", "us-south")
    assert result.exit_code == EXIT_OK
    assert result.stdout.splitlines() == US_SOUTH
    assert run("domains", "--region", "US South").stdout == result.stdout


def test_domains_json_shape() -> None:
    result = run("domains", "--region", "us-south", "--format", "json")
    assert result.exit_code == EXIT_OK
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == US_SOUTH
    assert rows[0] == {
        "name": "us.icr.io",
        "tags": ["region:us-south", "api", "token"],
        "source": "ibm-firewall",
        "as_of": "2019-09-25",
    }


def test_domains_csv_shape() -> None:
    result = run("domains", "--region", "us-south", "--format", "csv", "--no-delivery")
    assert result.exit_code == EXIT_OK
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows == [
        ["name", "tags", "source", "as_of", "retired"],
        ["us.icr.io", "region:us-south api token", "ibm-firewall", "2019-09-25", ""],
        ["registry.ng.bluemix.net", "region:us-south deprecated api", "ibm-firewall", "2022-02-11",
         ""],
    ]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--no-deprecated", "--no-delivery"], ["us.icr.io"]),
        (["--no-delivery", "--private"], ["us.icr.io", "registry.ng.bluemix.net",
                                          "private.us.icr.io"]),
        (["--wildcards"], ["*.icr.io", "registry.ng.bluemix.net"]),
        (["--wildcards", "--china", "--no-deprecated"], ["*.icr.io", "*.ibm-zh.com"]),
        (["--china", "--no-deprecated"], ["us.icr.io", "dd0.icr.io", "dd2.icr.io",
                                          "dd1-icr.ibm-zh.com", "dd3-icr.ibm-zh.com",
                                          "dd0.us.icr.io"]),
        (["--include", "china", "--include", "retired", "--no-deprecated"],
         ["us.icr.io", "dd0.icr.io", "dd2.icr.io", "dd4.icr.io", "dd6.icr.io",
          "dd1-icr.ibm-zh.com", "dd3-icr.ibm-zh.com", "dd5-icr.ibm-zh.com", "dd7-icr.ibm-zh.com",
          "dd0.us.icr.io"]),
    ],
)  # fmt: skip
def test_domains_flags(flags: list[str], expected: list[str]) -> None:
    result = run("domains", "--region", "us-south", *flags)
    assert result.exit_code == EXIT_OK
    assert result.stdout.splitlines() == expected


def test_domains_several_regions_and_all_regions() -> None:
    two = run("domains", "--region", "us-south", "--region", "eu-gb", "--no-delivery")
    assert two.stdout.splitlines() == [
        "uk.icr.io",
        "registry.eu-gb.bluemix.net",
        "us.icr.io",
        "registry.ng.bluemix.net",
    ]
    every = run("domains", "--all-regions").stdout.splitlines()
    assert {"icr.io", "in2.icr.io", "dd0.in2.icr.io", "registry.bluemix.net"} <= set(every)


def test_domains_params() -> None:
    result = run(
        "domains", "--registry", "ecr", "--param", "account=123456789012",
        "--param", "region=us-east-1", "--param", "region=eu-west-1", "--no-delivery",
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.stderr
    assert result.stdout.splitlines() == [
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "api.ecr.us-east-1.amazonaws.com",
        "api.ecr.eu-west-1.amazonaws.com",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--region ID (repeatable) or --all-regions"),
        (["--region", "us-south", "--all-regions"], "not both"),
        (["--region", "mars"], "unknown region 'mars'"),
        (["--registry", "harbor", "--all-regions"], "unknown registry catalog 'harbor'"),
        (["--registry", "ecr"], "needs --param account=<value> --param region=<value>"),
        (["--registry", "ecr", "--param", "account"], "write --param key=value"),
        (["--registry", "ecr", "--param", "acount=1"], "no placeholder <acount>"),
        (["--registry", "docker", "--region", "us"], "docker-hub has no regions"),
        (["--region", "us-south", "--format", "yaml"], "Invalid value for '--format'"),
    ],
)
def test_domains_usage_errors(args: list[str], message: str) -> None:
    result = run("domains", *args)
    assert result.exit_code == EXIT_USAGE
    assert message in result.stderr
    assert result.stdout == ""


def test_domains_registry_without_regions_needs_no_region_flag() -> None:
    result = run("domains", "--registry", "docker")
    assert result.exit_code == EXIT_OK
    assert result.stdout.splitlines()[:2] == ["registry-1.docker.io", "auth.docker.io"]
