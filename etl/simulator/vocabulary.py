"""The words generated records are made of.

The enums of the published OpenAPI description, values those enums do not list
yet, and the sample text (titles, tags, names, repositories) that the generators
in ``data`` draw from. Non-ASCII, empty and oddly shaped values are deliberate:
clients must store them unchanged.
"""

# The enums of the published OpenAPI description.
STATUSES = ("exit", "running", "suspended", "error", "new", "claimed", "resuming")
STATUS_DETAILS: dict[str, tuple[str, ...]] = {
    "running": ("working", "waiting_for_user", "waiting_for_approval", "finished"),
    "suspended": (
        "inactivity",
        "user_request",
        "usage_limit_exceeded",
        "out_of_credits",
        "out_of_quota",
        "no_quota_allocation",
        "payment_declined",
        "org_usage_limit_exceeded",
        "total_session_limit_exceeded",
        "error",
    ),
}
ORIGINS = (
    "webapp",
    "slack",
    "teams",
    "api",
    "linear",
    "jira",
    "automation",
    "cli",
    "desktop",
    "code_scan",
    "other",
)
CATEGORIES = (
    "bug_fixing",
    "ci_cd_and_devops",
    "code_quality_and_security",
    "code_review",
    "code_review_and_analysis",
    "data_and_automation",
    "documentation_and_content",
    "feature_development",
    "migrations_and_upgrades",
    "other",
    "refactoring_and_optimization",
    "research_and_exploration",
    "security",
    "unit_test_generation",
)
# Values the published enums do not list yet: clients must store them as text.
UNKNOWN_STATUS = "paused"
UNKNOWN_STATUS_DETAIL = "rate_limited"
UNKNOWN_ORIGIN = "vscode"
UNKNOWN_CATEGORY = "new_kind"
UNKNOWN_PR_STATE = "draft"

SUBCATEGORIES = (
    "Other",
    "Flaky test repair",
    "Dependency upgrade",
    "New API endpoint",
    "Dashboard widget",
    "Mise à niveau de Django",
    "Log pipeline",
)
TAGS = (
    "backend",
    "frontend",
    "infra",
    "urgent",
    "tech-debt",
    "security",
    "customer:acme",
    "q3-okr",
    "flaky-tests",
    "docs",
    "on-call",
    "good first issue",
    "team/payments",
    "migração",
    "セキュリティ",
)
GITHUB_REPOS = (
    "acme/web",
    "acme/api",
    "acme/infra",
    "acme/mobile-app",
    "globex/billing",
    "globex/data-pipeline",
    "initech/tps-reports",
    "umbrella/research",
    "hooli/nucleus",
    "hooli/docs.site",
)
GITLAB_PROJECTS = ("platform/core/gateway", "platform/tools/cli", "data/etl")
BITBUCKET_REPOS = ("stark/armor-firmware", "wayne/batcomputer")
ODD_PR_URLS = (
    "https://dev.azure.com/contoso/payments/_git/ledger/pullrequest/311",
    "https://github.example.com/platform/infra/pull/9",
    "https://github.com/acme/web/pulls",
    "pending",
)
TITLES: tuple[str | None, ...] = (
    "Fix flaky test in checkout flow",
    "Upgrade Django to 5.1",
    "Add retry logic to the webhook handler",
    "Investigate p99 latency regression",
    "Write unit tests for the billing service",
    "Refactor auth middleware",
    "Migrate CI from Jenkins to GitHub Actions",
    "Bump lodash from 4.17.20 to 4.17.21",
    "Corriger l'échec du déploiement nocturne",
    "Añadir validación de formularios",
    "Überarbeitung der Fehlerbehandlung",
    "Atualizar dependências do projeto",
    "修复登录页面的空指针异常",
    "ログイン画面のテストを追加",
    "결제 모듈 리팩터링",
    "إصلاح خطأ في صفحة الدفع",
    "🚀 Release prep for v2.3",
    "Fix 🐛 in CSV export",
    "Dark mode 🌙 for the settings page",
    "Pair on the parser 👩\u200d💻 with the team 👨\u200d👩\u200d👧",
    'Handle "quoted" names and back\\slashes',
    "Multi-line\ntitle with a tab\tinside",
    "null",
    "",
    "Very long title " * 20,
    None,
    None,
    None,
)
ORG_NAMES = (
    "Platform Engineering",
    "Données & Analytique",
    "Mobile",
    "Payments",
    "Security",
    "研究开发",
    "Customer Success",
    "Sandbox",
)
FIRST_NAMES = (
    "Ana",
    "Bjørn",
    "Chloé",
    "Dmitri",
    "Emeka",
    "Fatima",
    "Giulia",
    "Hiroshi",
)
LAST_NAMES = ("Álvarez", "Becker", "Chen", "Dubois", "Okafor", "Patel", "Müller", "Li")
ROLES = ("member", "admin", "viewer", "billing")
