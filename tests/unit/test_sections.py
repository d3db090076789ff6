"""How the aggregator reports a node's failure in that city's section."""

from __future__ import annotations

import grpc
import pytest

from creditnet import pilot
from creditnet.aggregator.service import _section_for_error
from creditnet.v2 import aggregator_pb2 as S


def failure(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_a_node_that_cannot_be_reached_is_unavailable_and_said_so() -> None:
    section = _section_for_error(
        pilot.HEFEI.proto, failure(grpc.StatusCode.UNAVAILABLE, "connection refused")
    )
    assert section.status == S.SECTION_STATUS_UNAVAILABLE and section.code == "UNAVAILABLE"
    assert section.reason == "the node is unreachable: connection refused"


def test_a_nodes_own_unavailable_keeps_its_rule() -> None:
    said = "chain.unpublished: the access is logged but witnesses have not cosigned it yet; retry"
    section = _section_for_error(pilot.HEFEI.proto, failure(grpc.StatusCode.UNAVAILABLE, said))
    assert section.status == S.SECTION_STATUS_UNAVAILABLE and section.reason == said


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, S.SECTION_STATUS_TIMEOUT),
        (grpc.StatusCode.PERMISSION_DENIED, S.SECTION_STATUS_DENIED),
        (grpc.StatusCode.ALREADY_EXISTS, S.SECTION_STATUS_DENIED),
    ],
)
def test_other_failures(code: grpc.StatusCode, status: int) -> None:
    section = _section_for_error(pilot.HEFEI.proto, failure(code, "query.replay: sign a new query"))
    assert section.status == status
