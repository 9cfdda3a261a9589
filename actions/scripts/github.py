"""The few GitHub REST calls the workflows make, with the standard library only.

It runs on a bare runner (no mlops-iac, no `gh`), so the comment job of a fork's pull
request needs nothing installed. The API's address comes from GITHUB_API_URL (GitHub
Enterprise, or the loopback stand-in of the tests), the token from GH_TOKEN.

  github.py comment REPO PR BODY_FILE [--author LOGIN]   one comment per pull request
  github.py find-pr REPO OWNER:BRANCH HEAD_SHA           the open pull request of a head
  github.py open-pr REPO HEAD BASE TITLE BODY_FILE       open (or find) a pull request
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from typing import Any

MARKER = "<!-- mlops-iac review -->"
# GitHub refuses comments over 65,536 characters; the review is bounded under 60,000 already.
LIMIT = 65_000
# The login of GITHUB_TOKEN's comments; a PAT or App token comments as its own user.
DEFAULT_AUTHOR = "github-actions[bot]"


class ApiError(Exception):
    pass


def call(method: str, path: str, body: dict[str, Any] | None = None) -> tuple[Any, str]:
    """One API call; returns the decoded JSON and the Link header (for pagination)."""
    base = os.environ.get("GITHUB_API_URL", "https://api.github.com").rstrip("/")
    url = path if path.startswith("http") else f"{base}/{path.lstrip('/')}"
    token = os.environ.get("GH_TOKEN") or os.environ.get("GITHUB_TOKEN") or ""
    if not token:
        raise ApiError("no token: set GH_TOKEN to a token that may use the GitHub API")
    if not url.startswith(("https://", "http://")):
        raise ApiError(f"GITHUB_API_URL must be an http(s) address, not {url}")
    data = json.dumps(body).encode() if body else None
    request = urllib.request.Request(url, method=method, data=data)  # noqa: S310 (checked just above)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Accept", "application/vnd.github+json")
    request.add_header("X-GitHub-Api-Version", "2022-11-28")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (checked above)
            text = response.read().decode()
            return (json.loads(text) if text else None), response.headers.get("Link", "")
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:500]
        raise ApiError(f"{method} {url} answered {error.code}: {detail}") from None
    except urllib.error.URLError as error:
        raise ApiError(f"{method} {url} failed: {error.reason}") from None


def paginate(path: str) -> list[Any]:
    items: list[Any] = []
    url: str | None = f"{path}{'&' if '?' in path else '?'}per_page=100"
    while url:
        page, link = call("GET", url)
        items.extend(page)
        found = re.search(r'<([^>]+)>;\s*rel="next"', link)
        url = found.group(1) if found else None
    return items


def comment(repo: str, pr: int, body: str, author: str) -> str:
    """Update our comment in place, or post it: never a second one per pull request.

    Ours is the one that starts with the marker AND was written by our author, so a
    comment someone else wrote with the marker copied into it is never overwritten.
    """
    if len(body) > LIMIT:
        body = body[:LIMIT] + "\n\n…(cut: the full review is in the job summary)\n"
    if not body.startswith(MARKER):
        body = f"{MARKER}\n{body}"
    ours = [
        c
        for c in paginate(f"repos/{repo}/issues/{pr}/comments")
        if c.get("body", "").startswith(MARKER) and (c.get("user") or {}).get("login") == author
    ]
    if ours:
        call("PATCH", f"repos/{repo}/issues/comments/{ours[0]['id']}", {"body": body})
        return f"updated comment {ours[0]['id']} on {repo}#{pr}"
    made, _ = call("POST", f"repos/{repo}/issues/{pr}/comments", {"body": body})
    return f"posted comment {made['id']} on {repo}#{pr}"


def find_pr(repo: str, head: str, sha: str) -> int:
    """The open pull request whose head is OWNER:BRANCH at SHA (a fork's run names no number)."""
    for pull in paginate(f"repos/{repo}/pulls?state=open&head={head}"):
        if pull["head"]["sha"] == sha:
            return int(pull["number"])
    raise ApiError(f"no open pull request of {repo} has head {head} at {sha}")


def open_pr(repo: str, head: str, base: str, title: str, body: str) -> str:
    owner = repo.split("/")[0]
    existing = paginate(f"repos/{repo}/pulls?state=open&head={owner}:{head}")
    if existing:
        return str(existing[0]["html_url"])
    made, _ = call("POST", f"repos/{repo}/pulls", {"title": title, "head": head, "base": base, "body": body})
    return str(made["html_url"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="github.py")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("comment")
    c.add_argument("repo")
    c.add_argument("pr", type=int)
    c.add_argument("body_file")
    c.add_argument("--author", default=DEFAULT_AUTHOR)
    f = sub.add_parser("find-pr")
    f.add_argument("repo")
    f.add_argument("head")
    f.add_argument("sha")
    o = sub.add_parser("open-pr")
    for name in ("repo", "head", "base", "title", "body_file"):
        o.add_argument(name)
    args = parser.parse_args(argv)
    try:
        if args.command == "comment":
            with open(args.body_file, encoding="utf-8") as file:
                print(comment(args.repo, args.pr, file.read(), args.author or DEFAULT_AUTHOR))
        elif args.command == "find-pr":
            print(find_pr(args.repo, args.head, args.sha))
        else:
            with open(args.body_file, encoding="utf-8") as file:
                print(open_pr(args.repo, args.head, args.base, args.title, file.read()))
    except (ApiError, OSError, KeyError, ValueError) as error:
        print(f"github.py {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
