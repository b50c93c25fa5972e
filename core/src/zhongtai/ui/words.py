"""Words the templates translate from data (``_(job.status)``), listed here so that
``pybabel extract`` finds them (see babel.cfg); nothing imports this at run time."""


def _(text: str) -> str:
    return text


STATUSES = [
    _("queued"),
    _("scheduled"),
    _("held"),
    _("running"),
    _("succeeded"),
    _("failed"),
    _("cancelled"),
]
ROLES = [_("viewer"), _("developer"), _("maintainer"), _("admin"), _("owner")]
OUTCOMES = [_("success"), _("denied"), _("failure")]
AUDIT_FILTERS = [
    _("actor"),
    _("action"),
    _("target_kind"),
    _("target_id"),
    _("project"),
    _("org"),
    _("outcome"),
    _("since"),
    _("until"),
]
FLASHES = [
    _("project created"),
    _("organization created"),
    _("key revoked"),
    _("saved"),
    _("member added"),
    _("members changed"),
    _("password changed"),
    _("invitation accepted"),
    _("user created"),
    _("user changed"),
    _("differs"),
]
INVITATIONS = [
    _("not a valid invitation"),
    _("this invitation has already been used"),
    _("this invitation has expired"),
    _("this invitation was sent to a different email address"),
]
