"""Settings.from_env: defaults, generated secrets, and one clear error per bad variable."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from common.settings import Settings, SettingsError, VendorRoute
from vendors.registry import read_settings
from vendors.replicate import ReplicateSettings

SECRET_A = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_QUFBQUFBQUFBQUFBQUFBQQ=="
LONG_SECRET = "s3cr3t-value-" + "s" * 32
LONG_ADMIN_KEY = "admin-value-" + "a" * 32
LONG_METRICS_TOKEN = "metrics-value-" + "m" * 32


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def env(data_dir: Path) -> dict[str, str]:
    return {"TASKHOOK_DATA_DIR": str(data_dir)}


def test_defaults(env: dict[str, str], data_dir: Path) -> None:
    settings = read_settings(env)
    assert settings.data_dir == data_dir
    assert settings.task_deadline == 1800.0
    assert settings.poll_after == 15.0
    assert settings.rate_limit == 600
    assert settings.max_active_tasks == 100
    assert settings.vendor("replicate") is None
    assert settings.vendors == ()
    assert settings.public_url is None
    assert settings.database_url is None
    assert settings.allow_private_urls is False
    assert settings.s3_endpoint_url is None
    assert settings.s3_embedded is True
    assert settings.s3_bucket == "taskhook"
    assert settings.aws_region is None  # boto3's own chain decides
    assert settings.env == "development" and not settings.production


def test_blank_values_count_as_unset(env: dict[str, str]) -> None:
    env.update(
        TASKHOOK_TASK_DEADLINE="  ",
        TASKHOOK_RATE_LIMIT="",
        DATABASE_URL=" ",
        REPLICATE_API_TOKEN="   ",
    )
    settings = read_settings(env)
    assert (settings.task_deadline, settings.rate_limit) == (1800.0, 600)
    assert settings.database_url is None
    assert settings.vendor("replicate") is None


def test_secrets_are_generated_once_with_mode_0600(env: dict[str, str], data_dir: Path) -> None:
    first = read_settings(env)

    for name, value in (("secret", first.secret), ("admin_key", first.admin_key)):
        path = data_dir / name
        assert path.read_text(encoding="utf-8").strip() == value
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(value) >= 32
    assert first.secret != first.admin_key

    second = read_settings(env)
    assert second.secret == first.secret
    assert second.admin_key == first.admin_key


def test_generating_leaves_only_the_secret_files(env: dict[str, str], data_dir: Path) -> None:
    read_settings(env)
    assert sorted(p.name for p in data_dir.iterdir()) == ["admin_key", "secret"]


def test_an_existing_secret_file_wins(env: dict[str, str], data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    kept = "kept-from-last-run-" + "x" * 32
    (data_dir / "secret").write_text(kept + "\n", encoding="utf-8")
    assert read_settings(env).secret == kept


def test_each_data_dir_gets_its_own_secrets(tmp_path: Path) -> None:
    one = read_settings({"TASKHOOK_DATA_DIR": str(tmp_path / "one")})
    two = read_settings({"TASKHOOK_DATA_DIR": str(tmp_path / "two")})
    assert one.secret != two.secret
    assert one.admin_key != two.admin_key


def test_given_secrets_are_used_and_nothing_is_written(env: dict[str, str], data_dir: Path) -> None:
    env.update(TASKHOOK_SECRET=LONG_SECRET, TASKHOOK_ADMIN_KEY=LONG_ADMIN_KEY)
    settings = read_settings(env)
    assert settings.secret == LONG_SECRET
    assert settings.admin_key == LONG_ADMIN_KEY
    assert settings.defaults == ()
    assert not (data_dir / "secret").exists()
    assert not (data_dir / "admin_key").exists()


def test_an_empty_secret_file_never_yields_an_empty_secret(
    env: dict[str, str], data_dir: Path
) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "secret").write_text("", encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        read_settings(env)
    assert str(data_dir / "secret") in str(caught.value)


def test_valid_values_are_read(env: dict[str, str]) -> None:
    env.update(
        TASKHOOK_TASK_DEADLINE="2.5",
        TASKHOOK_POLL_AFTER="30",
        TASKHOOK_RATE_LIMIT="0",
        TASKHOOK_MAX_ACTIVE_TASKS="0",
        TASKHOOK_ALLOW_PRIVATE_URLS="1",
        DATABASE_URL="postgresql://u:p@127.0.0.1:5432/taskhook",
        TASKHOOK_PUBLIC_URL="https://taskhook.example/",
        TASKHOOK_S3_ENDPOINT_URL="http://127.0.0.1:8333",
        TASKHOOK_S3_BUCKET="results",
        AWS_REGION="eu-west-1",
    )
    settings = read_settings(env)
    assert settings.task_deadline == 2.5
    assert settings.poll_after == 30.0
    assert settings.rate_limit == 0
    assert settings.max_active_tasks == 0
    assert settings.allow_private_urls is True
    assert settings.database_url == "postgresql://u:p@127.0.0.1:5432/taskhook"
    assert settings.public_url == "https://taskhook.example"
    assert settings.s3_endpoint_url == "http://127.0.0.1:8333"
    assert settings.s3_bucket == "results"
    assert settings.aws_region == "eu-west-1"


def test_postgres_scheme_is_accepted(env: dict[str, str]) -> None:
    env["DATABASE_URL"] = "postgres://127.0.0.1/db"
    assert read_settings(env).database_url == "postgres://127.0.0.1/db"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TASKHOOK_TASK_DEADLINE", "abc"),
        ("TASKHOOK_TASK_DEADLINE", "0"),
        ("TASKHOOK_TASK_DEADLINE", "-5"),
        ("TASKHOOK_TASK_DEADLINE", "nan"),
        ("TASKHOOK_POLL_AFTER", "x"),
        ("TASKHOOK_POLL_AFTER", "0"),
        ("TASKHOOK_RATE_LIMIT", "-1"),
        ("TASKHOOK_RATE_LIMIT", "1.5"),
        ("TASKHOOK_MAX_ACTIVE_TASKS", "lots"),
        ("TASKHOOK_MAX_ACTIVE_TASKS", "-3"),
        ("TASKHOOK_ALLOW_PRIVATE_URLS", "yes"),
        ("TASKHOOK_ALLOW_PRIVATE_URLS", "true"),
        ("DATABASE_URL", "mysql://x"),
        ("TASKHOOK_PUBLIC_URL", "ftp://x"),
        ("TASKHOOK_PUBLIC_URL", "taskhook.example"),
        ("REPLICATE_WEBHOOK_SECRET", "notwhsec"),
        ("REPLICATE_WEBHOOK_SECRET", f"{SECRET_A}, notwhsec"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], name: str, value: str) -> None:
    env["REPLICATE_API_TOKEN"] = "r8_token"
    env[name] = value
    with pytest.raises(SettingsError) as caught:
        read_settings(env)
    assert name in str(caught.value)


@pytest.mark.parametrize("value", ["whsec_", "whsec_!!! not base64 !!!"])
def test_an_undecodable_webhook_secret_names_its_variable(env: dict[str, str], value: str) -> None:
    env.update(REPLICATE_API_TOKEN="r8_token", REPLICATE_WEBHOOK_SECRET=value)
    with pytest.raises(SettingsError, match="REPLICATE_WEBHOOK_SECRET"):
        read_settings(env)


@pytest.mark.parametrize(
    ("value", "dialect"), [(None, "auto"), ("trueai", "trueai"), ("NoviceZK", "novicezk")]
)
def test_midjourney_proxy_dialect(env: dict[str, str], value: str | None, dialect: str) -> None:
    env["MJ_PROXY_BASE"] = "http://mj.test"
    if value is not None:
        env["MJ_PROXY_DIALECT"] = value
    settings = read_settings(env)
    assert (
        settings.vendor("midjourney") is not None
        and settings.vendor("midjourney").dialect == dialect
    )


def test_an_unknown_midjourney_proxy_dialect_names_its_variable(env: dict[str, str]) -> None:
    env.update(MJ_PROXY_BASE="http://mj.test", MJ_PROXY_DIALECT="v9")
    with pytest.raises(SettingsError, match="MJ_PROXY_DIALECT"):
        read_settings(env)


@pytest.mark.parametrize(("value", "production"), [(None, False), ("production", True)])
def test_taskhook_env(env: dict[str, str], value: str | None, production: bool) -> None:
    if value is not None:
        env.update(PRODUCTION, TASKHOOK_ENV=value)  # production: with what it requires
    assert read_settings(env).production is production


def test_an_unknown_taskhook_env_names_its_variable(env: dict[str, str]) -> None:
    env["TASKHOOK_ENV"] = "staging"
    with pytest.raises(SettingsError, match="TASKHOOK_ENV"):
        read_settings(env)


def test_create_rate_defaults_to_the_vendors_documented_limit(env: dict[str, str]) -> None:
    assert read_settings(env).create_rate is None
    env["TASKHOOK_CREATE_RATE"] = "25"
    assert read_settings(env).create_rate == 25.0
    env["TASKHOOK_CREATE_RATE"] = "0"
    with pytest.raises(SettingsError, match="TASKHOOK_CREATE_RATE"):
        read_settings(env)


def test_an_unpadded_webhook_secret_is_accepted(env: dict[str, str]) -> None:
    """As the official standardwebhooks library accepts it (issue 16.6)."""
    env.update(REPLICATE_API_TOKEN="r8_token", REPLICATE_WEBHOOK_SECRET=SECRET_B.rstrip("="))
    settings = read_settings(env)
    assert settings.vendor("replicate") is not None
    assert settings.vendor("replicate").webhook_secrets == (SECRET_B.rstrip("="),)


def test_webhook_secret_is_ignored_without_a_token(env: dict[str, str]) -> None:
    env["REPLICATE_WEBHOOK_SECRET"] = "notwhsec"
    assert read_settings(env).vendor("replicate") is None


def test_replicate_with_a_token(env: dict[str, str]) -> None:
    env["REPLICATE_API_TOKEN"] = "r8_token"
    settings = read_settings(env)
    assert settings.vendor("replicate") == ReplicateSettings(
        api_token="r8_token", api_base="https://api.replicate.com/v1", webhook_secrets=()
    )
    assert settings.vendors == ("replicate",)


def test_replicate_base_loses_its_trailing_slash(env: dict[str, str]) -> None:
    env.update(REPLICATE_API_TOKEN="r8_token", REPLICATE_API_BASE="http://127.0.0.1:9000/v1/")
    settings = read_settings(env)
    assert settings.vendor("replicate") is not None
    assert settings.vendor("replicate").api_base == "http://127.0.0.1:9000/v1"


def test_replicate_webhook_secrets_are_comma_separated(env: dict[str, str]) -> None:
    env.update(REPLICATE_API_TOKEN="r8_token", REPLICATE_WEBHOOK_SECRET=f" {SECRET_A}, {SECRET_B},")
    settings = read_settings(env)
    assert settings.vendor("replicate") is not None
    assert settings.vendor("replicate").webhook_secrets == (SECRET_A, SECRET_B)


def test_vendors_property() -> None:
    assert Settings().vendors == ()
    assert Settings(vendor_settings={"replicate": ReplicateSettings(api_token="t")}).vendors == (
        "replicate",
    )


def test_secret_values_stay_out_of_repr(env: dict[str, str]) -> None:
    env.update(
        TASKHOOK_SECRET=LONG_SECRET,
        TASKHOOK_ADMIN_KEY=LONG_ADMIN_KEY,
        TASKHOOK_METRICS_TOKEN=LONG_METRICS_TOKEN,
    )
    text = repr(read_settings(env))
    assert LONG_SECRET not in text
    assert LONG_ADMIN_KEY not in text
    assert LONG_METRICS_TOKEN not in text


def test_fal_and_midjourney_are_configured_by_their_variables(env: dict[str, str]) -> None:
    env.update(
        FAL_KEY="fal-key-xyzzy", MJ_PROXY_BASE="http://mj.local:8080/", MJ_PROXY_SECRET="mj-plugh"
    )
    s = read_settings(env)
    assert s.vendor("fal") is not None and s.vendor("fal").api_key == "fal-key-xyzzy"
    assert (s.vendor("fal").queue_base, s.vendor("fal").jwks_url) == (
        "https://queue.fal.run",
        "https://rest.alpha.fal.ai/.well-known/jwks.json",
    )
    assert s.vendor("midjourney") is not None
    assert (s.vendor("midjourney").api_base, s.vendor("midjourney").api_secret) == (
        "http://mj.local:8080",
        "mj-plugh",
    )
    assert s.vendors == ("fal", "midjourney")
    assert "xyzzy" not in repr(s) and "plugh" not in repr(s)


def test_fal_endpoints_can_be_moved(env: dict[str, str]) -> None:
    env.update(FAL_KEY="k", FAL_QUEUE_BASE="http://sim/fal/", FAL_JWKS_URL="http://sim/jwks")
    s = read_settings(env)
    assert s.vendor("fal") is not None and (
        s.vendor("fal").queue_base,
        s.vendor("fal").jwks_url,
    ) == (
        "http://sim/fal",
        "http://sim/jwks",
    )


def test_routes_are_read_in_order_of_preference(env: dict[str, str]) -> None:
    env["TASKHOOK_ROUTES"] = (
        '{"flux": [{"vendor": "fal", "model": "fal-ai/flux/dev", "price": 2},'
        ' {"vendor": "replicate", "model": "black-forest-labs/flux-dev"}]}'
    )
    routes = read_settings(env).routes
    assert routes == {
        "flux": (
            VendorRoute("fal", "fal-ai/flux/dev", 2),
            VendorRoute("replicate", "black-forest-labs/flux-dev", 1),
        )
    }


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("not json", "not valid JSON"),
        ("[]", "TASKHOOK_ROUTES must be JSON"),
        ('{"flux": []}', "non-empty list"),
        ('{"flux": [{"vendor": "nope"}]}', "unknown vendor 'nope'"),
        ('{"flux": [{"vendor": "fal", "price": -1}]}', "bad route"),
        ('{"flux": [{"vendor": "fal", "price": 1.5}]}', "bad route"),
        ('{"flux": [{"vendor": "fal", "colour": "red"}]}', "bad route"),
        ('{"flux": [{"vendor": "fal"}, {"vendor": "fal"}]}', "lists a vendor twice"),
    ],
)
def test_bad_routes_stop_start_up_with_the_reason(env: dict[str, str], raw: str, says: str) -> None:
    env["TASKHOOK_ROUTES"] = raw
    with pytest.raises(SettingsError, match="TASKHOOK_ROUTES") as err:
        read_settings(env)
    assert says in str(err.value)


def test_a_midjourney_base_must_be_a_url(env: dict[str, str]) -> None:
    env["MJ_PROXY_BASE"] = "mj.local"
    with pytest.raises(SettingsError, match="MJ_PROXY_BASE"):
        read_settings(env)


# --- TASKHOOK_ENV, every problem at once, secrets long enough (issues 14.13 and 15.1) -------

PRODUCTION = {
    "TASKHOOK_ENV": "production",
    "DATABASE_URL": "postgresql://taskhook:pw@db.internal:5432/taskhook",
    "TASKHOOK_SECRET": LONG_SECRET,
    "TASKHOOK_PUBLIC_URL": "https://hooks.example.com",
    "TASKHOOK_S3_BUCKET": "results",
    "TASKHOOK_ADMIN_KEY": LONG_ADMIN_KEY,
}


def test_every_bad_variable_is_named_in_one_error(env: dict[str, str]) -> None:
    env.update(
        TASKHOOK_TASK_DEADLINE="soon",
        TASKHOOK_RATE_LIMIT="-1",
        TASKHOOK_SECRET="short",
        TASKHOOK_LOG_LEVEL="loud",
        TASKHOOK_ROUTES="not json",
    )
    with pytest.raises(SettingsError) as caught:
        read_settings(env)
    message = str(caught.value)
    assert "\n" not in message
    for name in (
        "TASKHOOK_TASK_DEADLINE",
        "TASKHOOK_RATE_LIMIT",
        "TASKHOOK_SECRET",
        "TASKHOOK_LOG_LEVEL",
        "TASKHOOK_ROUTES",
    ):
        assert name in message
    assert len(caught.value.problems) == 5


@pytest.mark.parametrize(
    "name", ["TASKHOOK_SECRET", "TASKHOOK_ADMIN_KEY", "TASKHOOK_METRICS_TOKEN"]
)
@pytest.mark.parametrize("environment", ["development", "production"])
def test_a_configured_secret_needs_32_bytes(
    env: dict[str, str], name: str, environment: str
) -> None:
    env.update(PRODUCTION, TASKHOOK_ENV=environment)
    env[name] = "x" * 31
    with pytest.raises(SettingsError, match=f"{name} must be at least 32 bytes, got 31"):
        read_settings(env)
    env[name] = "é" * 16  # 32 bytes in UTF-8, 16 characters
    assert read_settings(env).env == environment


def test_a_secret_file_too_short_is_refused_not_used(env: dict[str, str], data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "secret").write_text("short\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"TASKHOOK_SECRET .* at least 32 bytes, got 5"):
        read_settings(env)


def test_production_names_every_missing_setting_and_generates_nothing(
    env: dict[str, str], data_dir: Path
) -> None:
    env["TASKHOOK_ENV"] = "production"
    with pytest.raises(SettingsError) as caught:
        read_settings(env)
    message = str(caught.value)
    for name in (
        "DATABASE_URL",
        "TASKHOOK_SECRET",
        "TASKHOOK_PUBLIC_URL",
        "TASKHOOK_S3_BUCKET",
        "TASKHOOK_ADMIN_KEY",
    ):
        assert f"{name} " in message
    assert "`off` for no admin API" in message
    assert not data_dir.exists()  # no secret was generated, no directory made


def test_a_production_configuration(env: dict[str, str], data_dir: Path) -> None:
    env.update(PRODUCTION)
    settings = read_settings(env)
    assert settings.production
    assert settings.defaults == ()
    assert (settings.s3_embedded, settings.s3_endpoint_url, settings.s3_bucket) == (
        False,
        None,
        "results",
    )
    assert not data_dir.exists()


@pytest.mark.parametrize("url", ["http://hooks.example.com", "hooks.example.com"])
def test_production_wants_an_https_public_url(env: dict[str, str], url: str) -> None:
    env.update(PRODUCTION, TASKHOOK_PUBLIC_URL=url)
    with pytest.raises(SettingsError, match="TASKHOOK_PUBLIC_URL must be the https://"):
        read_settings(env)


def test_the_admin_api_can_be_turned_off(env: dict[str, str], data_dir: Path) -> None:
    env.update(PRODUCTION, TASKHOOK_ADMIN_KEY="off")
    assert read_settings(env).admin_key is None
    env = {"TASKHOOK_DATA_DIR": str(data_dir), "TASKHOOK_ADMIN_KEY": "OFF"}
    assert read_settings(env).admin_key is None
    assert not (data_dir / "admin_key").exists()


def test_an_unknown_environment_is_refused(env: dict[str, str]) -> None:
    env["TASKHOOK_ENV"] = "staging"
    with pytest.raises(SettingsError, match="TASKHOOK_ENV must be one of development, production"):
        read_settings(env)


@pytest.mark.parametrize(
    ("given", "embedded", "endpoint", "bucket"),
    [
        ({}, True, None, "taskhook"),
        ({"TASKHOOK_S3_BUCKET": "mine"}, False, None, "mine"),  # AWS S3 itself
        (
            {"TASKHOOK_S3_ENDPOINT_URL": "http://minio:9000/"},
            False,
            "http://minio:9000",
            "taskhook",
        ),
        # AWS credentials alone are not a storage choice: a shell may carry them for other work.
        ({"AWS_ACCESS_KEY_ID": "AKIA", "AWS_REGION": "eu-west-1"}, True, None, "taskhook"),
    ],
)
def test_storage_is_embedded_only_when_no_storage_setting_is_given(
    env: dict[str, str],
    given: dict[str, str],
    embedded: bool,
    endpoint: str | None,
    bucket: str,
) -> None:
    env.update(given)
    settings = read_settings(env)
    assert (settings.s3_embedded, settings.s3_endpoint_url, settings.s3_bucket) == (
        embedded,
        endpoint,
        bucket,
    )


def test_development_notes_what_it_generated(env: dict[str, str], data_dir: Path) -> None:
    notes = read_settings(env).defaults
    assert notes == (
        f"TASKHOOK_SECRET generated, kept in {data_dir / 'secret'}",
        f"TASKHOOK_ADMIN_KEY generated, kept in {data_dir / 'admin_key'}",
    )


@pytest.mark.parametrize(
    ("given", "on_web_port"),
    [
        ({}, True),
        ({"TASKHOOK_METRICS_PORT": "9100"}, False),
        ({"TASKHOOK_METRICS_TOKEN": LONG_METRICS_TOKEN}, True),
        ({"TASKHOOK_ENV": "production"}, False),
        ({"TASKHOOK_ENV": "production", "TASKHOOK_METRICS_TOKEN": LONG_METRICS_TOKEN}, True),
    ],
)
def test_where_metrics_are_served(
    env: dict[str, str], given: dict[str, str], on_web_port: bool
) -> None:
    if given.get("TASKHOOK_ENV") == "production":
        env.update(PRODUCTION)
    env.update(given)
    assert read_settings(env).metrics_on_web_port is on_web_port


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TASKHOOK_METRICS_PORT", "0"),
        ("TASKHOOK_METRICS_PORT", "http"),
        ("TASKHOOK_ACCESS_LOG", "yes"),
        ("TASKHOOK_STARTUP_RETRY", "-1"),
        ("TASKHOOK_SCHEMA_WAIT", "forever"),
        ("TASKHOOK_S3_ENDPOINT_URL", "minio:9000"),
    ],
)
def test_more_bad_values_name_their_variable(env: dict[str, str], name: str, value: str) -> None:
    env[name] = value
    with pytest.raises(SettingsError, match=name):
        read_settings(env)


def test_history_is_kept_unless_a_retention_is_set(env: dict[str, str]) -> None:
    settings = read_settings(env)
    assert settings.event_retention is None and settings.result_retention is None
    assert settings.prune_interval == 300.0
    env.update(
        TASKHOOK_EVENT_RETENTION="2592000",
        TASKHOOK_RESULT_RETENTION="keep",
        TASKHOOK_PRUNE_INTERVAL="60",
    )
    settings = read_settings(env)
    assert settings.event_retention == 2592000.0 and settings.result_retention is None
    assert settings.prune_interval == 60.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TASKHOOK_EVENT_RETENTION", "0"),
        ("TASKHOOK_EVENT_RETENTION", "forever"),
        ("TASKHOOK_RESULT_RETENTION", "-1"),
        ("TASKHOOK_RESULT_RETENTION", "nan"),
        ("TASKHOOK_RESULT_RETENTION", "inf"),
        ("TASKHOOK_PRUNE_INTERVAL", "0"),
    ],
)
def test_a_bad_retention_names_its_variable(env: dict[str, str], name: str, value: str) -> None:
    env[name] = value
    with pytest.raises(SettingsError) as caught:
        read_settings(env)
    assert name in str(caught.value)
