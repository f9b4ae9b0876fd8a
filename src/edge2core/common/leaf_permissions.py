"""What a site may do on the core's broker over its leaf link (the site's user at the core).

nats-server applies a leaf connection's user permissions to the traffic across the link:
subjects the user may publish are what the site may send to the core, subjects it may subscribe
to are what the core forwards to the site. A site may:

* publish only on its own subjects (`e2c.sites.<site>.>`: model reports, status;
  `e2c.events.<site>.>`), never as another site;
* use only the read side of the core's JetStream API for the desired-state KV buckets (bucket
  info, consumers for watches, direct gets, flow control), never create, purge or delete a
  stream or put a value;
* read of the deploy bucket only the `fleet` key and its own `site.<site>`: consumers only with
  the key in the create subject (`CONSUMER.CREATE.<stream>.<name>.<filter>`, which nats-server
  2.10+ refuses for a consumer filtering anything else; the edge watches so, `kv_key_watch`),
  direct gets only by those subjects; no `STREAM.MSG.GET` or body-addressed `DIRECT.GET` there.
  The catalogue bucket is the same for every site and stays readable whole;
* receive only on its own inbox prefix (`site_inbox`), so nothing addressed to another site's
  or the core's own requests is forwarded to it.

Without permissions a site could delete the core's KV streams for every site (checked).
"""

from __future__ import annotations

from edge2core.common.events import CATALOGUE_BUCKET, DEPLOY_BUCKET, FLEET_KEY, site_key

__all__ = ["site_inbox", "site_publish", "site_subscribe"]



def site_inbox(site: str) -> str:
    """The inbox prefix of a site's clients whose requests cross the leaf link."""
    return f"_E2C_INBOX.{site}"


def site_publish(site: str, core_domain: str) -> tuple[str, ...]:
    """Subjects site `site` may send to the core."""
    api = f"$JS.{core_domain}.API"
    subjects = [f"e2c.sites.{site}.>", f"e2c.events.{site}.>", f"{api}.INFO"]
    catalogue = f"KV_{CATALOGUE_BUCKET}"
    subjects += [
        f"{api}.STREAM.INFO.{catalogue}",
        f"{api}.CONSUMER.CREATE.{catalogue}", f"{api}.CONSUMER.CREATE.{catalogue}.>",
        f"{api}.CONSUMER.DELETE.{catalogue}.>", f"{api}.CONSUMER.INFO.{catalogue}.>",
        f"{api}.DIRECT.GET.{catalogue}", f"{api}.DIRECT.GET.{catalogue}.>",
        f"{api}.STREAM.MSG.GET.{catalogue}",
        f"$JS.FC.{catalogue}.>",
    ]
    deploy = f"KV_{DEPLOY_BUCKET}"
    subjects += [f"{api}.STREAM.INFO.{deploy}", f"{api}.CONSUMER.DELETE.{deploy}.*",
                 f"{api}.CONSUMER.INFO.{deploy}.*", f"$JS.FC.{deploy}.>"]
    for key in (FLEET_KEY, site_key(site)):
        subject = f"$KV.{DEPLOY_BUCKET}.{key}"
        subjects += [f"{api}.CONSUMER.CREATE.{deploy}.*.{subject}", f"{api}.DIRECT.GET.{deploy}.{subject}"]
    return tuple(subjects)


def site_subscribe(site: str) -> tuple[str, ...]:
    """Subjects the core forwards to site `site`: answers to its own requests only."""
    return (f"{site_inbox(site)}.>",)
