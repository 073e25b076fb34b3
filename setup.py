from setuptools import find_packages, setup

# The dagster family is pinned together: an unpinned `dagster-postgres` resolves to an ancient
# 0.11.x that cannot talk to dagster 1.13 (see DESIGN.md, "Library pins that matter").
DAGSTER = "1.13.27"
DAGSTER_LIBS = "0.29.27"
LOCALSTRIPE = "localstripe==1.15.10"
AIOSMTPD = "aiosmtpd>=1.4.6,<2"

setup(
    name="billing_pipeline",
    version="0.1.0",
    description="Nightly billing automation for therapy practices, as a Dagster code location.",
    packages=find_packages(exclude=["tests", "tests.*", "bench"]),
    package_data={
        "billing_pipeline": [
            "db/migrations/*.py",
            "db/migrations/versions/*.py",
            "db/migrations/script.py.mako",
            "scenario/schema.json",
            "resources/documents/templates/*.html.j2",
            "resources/documents/static/*.css",
        ]
    },
    python_requires=">=3.11,<3.14",
    install_requires=[
        f"dagster=={DAGSTER}",
        f"dagster-webserver=={DAGSTER}",
        f"dagster-graphql=={DAGSTER}",
        f"dagster-postgres=={DAGSTER_LIBS}",
        "sqlalchemy>=2.0.30,<2.2",
        "alembic>=1.13,<2",
        "psycopg2-binary>=2.9.9,<3",
        "stripe==16.1.0",
        "jsonschema>=4.21,<5",
        "rfc3339-validator>=0.1.4",
        "click>=8.1,<9",
        "tqdm>=4.66,<5",
        "tzdata>=2024.1",
        # PDFs: WeasyPrint renders Jinja2 templates (resources/renderer.py, DESIGN.md).
        "weasyprint>=70,<71",
        "jinja2>=3.1.4,<4",
        # The UI's login proxy (billing_pipeline/ui_proxy.py).
        "aiohttp>=3.9,<4",
        # Data checks: Great Expectations 1.x suites on pandas DataFrames inside asset checks
        # (checks/expectations.py). Not dagster-ge: it needs GX < 1 and pandas < 3 (DESIGN.md).
        "great-expectations==1.24.1",
        "pandas>=2.2,<4",
    ],
    extras_require={
        # A local Stripe for the demo and the tests (never in production): scripts/setup.sh
        # installs the test extra, which includes it.
        "localstripe": [LOCALSTRIPE],
        # The demo: a local Stripe and a local SMTP sink that keeps the emails as .eml files.
        "demo": [LOCALSTRIPE, AIOSMTPD],
        # Steps as Celery tasks on many machines (RabbitMQ or Redis): the dagster family's pin.
        "celery": [f"dagster-celery=={DAGSTER_LIBS}"],
        "test": [
            LOCALSTRIPE,
            f"dagster-celery=={DAGSTER_LIBS}",
            "pytest>=8,<10",
            "pytest-xdist>=3.5,<4",
            "hypothesis>=6.100,<7",
            AIOSMTPD,
            "pypdf>=5,<8",
            "ruff==0.17.6",
            "mypy==2.4.1",
            "types-jsonschema==4.26.0.20261006",
            "types-tqdm==4.70.0.20261106",
            "import-linter==2.17",
            # Drives Debian's chromium (executable_path) in the UI's end-to-end test; its
            # browsers are never downloaded (scripts/setup.sh).
            "playwright==1.65.2",
        ],
    },
    entry_points={"console_scripts": ["billing-pipeline=billing_pipeline.cli:main"]},
)
