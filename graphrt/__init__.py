"""graphrt: a compiler-style runtime for decoding tri-mode language models.

A decoding mode is a dataflow graph of ``forward``, denoise, verify and sample
nodes; passes rewrite, fuse and schedule it; a session runs it per request as
a resumable program over a backbone that batches every request's forwards.
"""

import graphrt.ops  # noqa: F401  (registers the built-in ops, their out-variants and the n-gram lookup)
import graphrt.adaptive  # noqa: F401  (registers the ops of adaptive speculation: draft_choice, acceptance_update)
from graphrt.api import Model, chat, compile, generate, load
from graphrt.backbone import Backbone, BackboneConfig, ForwardBatch
from graphrt.builder import GraphBuilder, Var
from graphrt.compiled import CompiledPolicy
from graphrt.events import ExecutionError
from graphrt.ir import Graph, GraphError, Node, Value
from graphrt.params import GenerationParams, GenerationResult
from graphrt.policy import Policy
from graphrt.printer import to_dot
from graphrt.registry import OpDef, get_op, register_op
from graphrt.serialize import graph_from_json, graph_to_json
from graphrt.session import Session
from graphrt.verify import verify

__version__ = "0.1.0"

__all__ = [
    "Backbone", "BackboneConfig", "CompiledPolicy", "ExecutionError", "ForwardBatch", "GenerationParams",
    "GenerationResult", "Graph", "GraphBuilder", "GraphError", "Model", "Node", "OpDef", "Policy", "Session",
    "Value", "Var", "chat", "compile", "generate", "get_op", "graph_from_json", "graph_to_json", "load", "register_op",
    "to_dot", "verify",
]
