"""A scripted causal LM for testing what clients see: it writes the reply a function of the prompt chooses
(a tool call, a final answer), character by character, through the real engine and server. Tiny random
models cannot write meaningful tool calls; this one stands in for a model that does, and nothing else
about the server path is faked."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Qwen2.5's chat template (as in its tokenizer_config.json and GGUF): Hermes-style <tool_call> blocks
QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
REPLY_START = "<|im_start|>assistant\n"


def char_tokenizer(template: str = QWEN25_TEMPLATE):
    """Characters (printable ASCII, newline, tab) as tokens, "</s>" as EOS, with `template`."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = ["\t", "\n"] + [chr(c) for c in range(32, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["</s>"] = len(chars)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="</s>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", unk_token="</s>")
    tok.chat_template = template
    return tok


class ScriptedLM:
    """A `CausalLM` whose greedy reply to a prompt is `respond(prompt_text)`, then EOS: the script's next
    character gets logit `margin`, every other token 0 (a soft preference, so that a constraint on the
    output can still steer it). `prompts` records every prompt it answered."""

    def __init__(self, respond: Callable[[str], str], margin: float = 10.0, max_length: int | None = 2048,
                 template: str = QWEN25_TEMPLATE) -> None:
        self.respond, self.margin, self.max_length = respond, margin, max_length
        self.tokenizer = char_tokenizer(template)
        self.vocab_size = len(self.tokenizer)
        self.eos_token_ids = {self.tokenizer.eos_token_id}
        self.device = torch.device("cpu")
        self.tokens: list[int] = []
        self.prompts: list[str] = []
        self._script: tuple[int, str] | None = None  # (prompt length, reply)

    @property
    def length(self) -> int:
        return len(self.tokens)

    def _next_logits(self) -> torch.Tensor:
        text = self.tokenizer.decode(self.tokens)
        at = text.rfind(REPLY_START)
        start = at + len(REPLY_START) if at >= 0 else len(text)
        if self._script is None or self._script[0] != start:
            self.prompts.append(text[:start])
            self._script = (start, self.respond(text[:start]))
        written, script = text[start:], self._script[1]
        logits = torch.zeros(self.vocab_size)
        # where the reply is in the script: from its start, or (when a constraint made the reply skip the
        # script's opening words, e.g. a forced tool call) where the text written so far occurs in it
        at = 0 if script.startswith(written) else script.find(written) if written else -1
        if at >= 0 and at + len(written) < len(script):
            logits[self.tokenizer.convert_tokens_to_ids(script[at + len(written)])] = self.margin
        else:
            logits[self.tokenizer.eos_token_id] = self.margin
        return logits

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        ids = input_ids.view(-1).tolist()
        keep = min(logits_to_keep or len(ids), len(ids))
        self.tokens.extend(int(t) for t in ids[: len(ids) - keep])  # rows whose logits are not asked for
        rows = []
        for token in ids[len(ids) - keep :]:
            self.tokens.append(int(token))
            rows.append(self._next_logits())
        return torch.stack(rows).unsqueeze(0)

    def truncate(self, length: int) -> None:
        del self.tokens[length:]

    def reset(self) -> None:
        self.tokens.clear()
        self._script = None
