"""The models: what turns a checkpoint into a :class:`graphrt.backbone.Backbone`.

The transformer backbone (:mod:`.transformer`) with its per-row KV cache (:mod:`.kvcache`) and its
``torch.compile`` shape buckets (:mod:`.compiled_shapes`); the model config (:mod:`.config`);
checkpoint reading and writing (:mod:`.checkpoint`), GGUF files (:mod:`.gguf`) and models known by
name (:mod:`.named_models`); the tokenizer (:mod:`.tokenizer`); prepacked linear layers
(:mod:`.packed_linear`); tensor parallel (:mod:`.tensor_parallel`); and :mod:`.loader`, the
``graphrt.load`` behind the plugin.

This room imports the core (``graphrt``) only; the other rooms (policies, cli, serving,
training) import it, never the reverse.
"""
