"""Invariant: the base image is the one asked for; only the default base may fall back to a Debian bootstrap.

What it protects: a user who sets BASE_IMAGE (a hardened or GPU base) getting a bootstrapped Debian
without being told, and a registry-less host failing its build (or retrying a doomed pull on every
warm build) when it could bootstrap. Decided against a fake engine: no Docker needed.
"""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest

from sandbox import constants as C
from sandbox.build import base, options


class FakeImage:
    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.labels = labels or {}
        self.id = "sha256:" + "0" * 64


class FakeImages:
    def __init__(self, present: dict[str, FakeImage], pullable: set[str]) -> None:
        self.present, self.pullable = present, pullable
        self.pulls: list[str] = []

    def get(self, ref: str) -> FakeImage:
        if ref not in self.present:
            raise docker.errors.ImageNotFound(f"no {ref}")
        return self.present[ref]

    def pull(self, repo: str, tag: str) -> FakeImage:
        ref = f"{repo}:{tag}"
        self.pulls.append(ref)
        if ref not in self.pullable:
            raise docker.errors.APIError("registry unreachable")
        self.present[ref] = FakeImage()
        return self.present[ref]


class FakeClient:
    def __init__(self, present: dict[str, FakeImage] | None = None, pullable: set[str] | None = None) -> None:
        self.images = FakeImages(present or {}, pullable or set())


BOOTSTRAPPED = FakeImage({options.LABEL_BASE_PACKAGES: ",".join(options.BASE_PACKAGES)})


@pytest.fixture
def bootstraps(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def fake_bootstrap(client: FakeClient, **_: Any) -> str:
        calls.append(client)
        client.images.present[C.BASE_IMAGE_LOCAL] = BOOTSTRAPPED
        return C.BASE_IMAGE_LOCAL

    monkeypatch.setattr(base, "bootstrap_base_image", fake_bootstrap)
    return calls


def test_a_present_base_is_used_as_is(bootstraps: list[Any]) -> None:
    client = FakeClient({options.DEFAULT_BASE_IMAGE: FakeImage(), C.BASE_IMAGE_LOCAL: BOOTSTRAPPED})
    assert base.ensure_base_image(client, options.DEFAULT_BASE_IMAGE) == options.DEFAULT_BASE_IMAGE
    assert client.images.pulls == [] and bootstraps == []


def test_the_default_base_is_pulled_when_a_registry_answers(bootstraps: list[Any]) -> None:
    client = FakeClient(pullable={options.DEFAULT_BASE_IMAGE})
    assert base.ensure_base_image(client, options.DEFAULT_BASE_IMAGE) == options.DEFAULT_BASE_IMAGE
    assert bootstraps == []


def test_without_a_registry_the_default_base_is_bootstrapped_once(bootstraps: list[Any]) -> None:
    client = FakeClient()
    assert base.ensure_base_image(client, options.DEFAULT_BASE_IMAGE) == C.BASE_IMAGE_LOCAL
    assert len(bootstraps) == 1 and client.images.pulls == [options.DEFAULT_BASE_IMAGE]
    # The next build reuses the bootstrap and does not try the registry again.
    assert base.ensure_base_image(client, options.DEFAULT_BASE_IMAGE) == C.BASE_IMAGE_LOCAL
    assert len(bootstraps) == 1 and client.images.pulls == [options.DEFAULT_BASE_IMAGE]


def test_a_bootstrap_with_another_package_set_is_rebuilt(bootstraps: list[Any]) -> None:
    client = FakeClient({C.BASE_IMAGE_LOCAL: FakeImage({options.LABEL_BASE_PACKAGES: "python3"})})
    assert base.ensure_base_image(client, C.BASE_IMAGE_LOCAL) == C.BASE_IMAGE_LOCAL
    assert len(bootstraps) == 1


def test_an_explicit_base_that_cannot_be_found_is_an_error_not_a_substitute(bootstraps: list[Any]) -> None:
    client = FakeClient({C.BASE_IMAGE_LOCAL: BOOTSTRAPPED})
    with pytest.raises(options.BaseImageUnavailable, match="my-registry/base:1"):
        base.ensure_base_image(client, "my-registry/base:1")
    assert client.images.pulls == ["my-registry/base:1"] and bootstraps == []
