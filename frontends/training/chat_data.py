"""The base model's own chat answers, as drafter training data.

Verification accepts a draft token when it equals the base model's greedy token, so the
best text to train drafts on is what the base model itself answers. This module writes the
questions (general and programming questions written for training, disjoint from the
benchmark's held-out prompts in ``bench/prompts``) and code-edit requests on functions from
the corpus's *training* split, has the base model answer each one greedily (AR, batched in
one :class:`~graphrt.session.Session`), and caches the conversations, chat template
included, as one token stream with the offset of every conversation.

``graphrt train --chat-rows R`` adds ``R`` rows per batch from this stream, each starting
inside one conversation (at its beginning when it fits in a row), so a code-edit answer's
row usually holds the function it copies from.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import corpus as corpus_mod

GENERAL_QUESTIONS = (
    "What is the tallest mountain in Europe?", "Who wrote the novel Pride and Prejudice?",
    "Why do leaves change colour in autumn?", "What causes the tides?", "How does a rainbow form?",
    "What is photosynthesis?", "How far is the Moon from the Earth?", "Why do cats purr?",
    "What is the boiling point of water at the top of a high mountain, and why?",
    "Give me three tips for sleeping better.", "How do vaccines work?", "What is inflation in economics?",
    "Name the planets of the solar system in order.", "What is the largest ocean on Earth?",
    "How do I make a simple tomato sauce?", "What is the difference between weather and climate?",
    "Why is the ocean salty?", "Explain what DNA is to a ten-year-old.", "What is the speed of light?",
    "How do airplanes stay in the air?", "What is a black hole?", "Give me five ideas for a rainy weekend.",
    "What language is spoken in Brazil?", "How can I improve my handwriting?", "What is a prime number?",
    "Summarise the plot of Romeo and Juliet in three sentences.", "What does a CPU do?",
    "How should I prepare for a job interview?", "What is the Pythagorean theorem?",
    "How do bees make honey?", "What are the three states of matter?", "Why do we have seasons?",
    "Write a short poem about the sea.", "What is the capital of Canada?", "How does compound interest work?",
    "What are some healthy breakfast ideas?", "Explain the difference between a virus and a bacterium.",
    "What is machine learning?", "How do I write a good email to my manager asking for a day off?",
    "What is the greenhouse effect?", "Translate 'good morning, how are you?' into French.",
    "What is the difference between a lake and a pond?", "Why do onions make people cry?",
    "Who painted the Mona Lisa?", "What is the largest desert in the world?", "How do earthquakes happen?",
    "What is the chemical formula of water, and what does it mean?", "Why do we dream?",
    "Give me four tips for learning a new language.", "How does a refrigerator keep food cold?",
    "What is the difference between an alligator and a crocodile?", "How many continents are there? Name them.",
    "What is the population of Japan, roughly?", "How does the heart pump blood?", "What is a light year?",
    "Write a haiku about autumn.", "Why is exercise good for the brain?", "What is the stock market?",
    "How do I make a cup of green tea?", "What is the difference between a hurricane and a tornado?",
    "Who was Albert Einstein?", "What is the Great Wall of China?", "How do solar panels make electricity?",
    "Give me three ideas for a birthday present for a friend who likes books.", "What is an atom made of?",
    "Why do birds migrate?", "What are the main causes of the French Revolution?", "How do I remove a coffee stain?",
    "What is the difference between empathy and sympathy?", "Explain gravity in simple terms.",
    "What should I pack for a weekend hiking trip?", "Why do we yawn?", "What is a budget and how do I make one?",
    "Write a limerick about a cat who loves pizza.", "What is the role of the United Nations?",
    "How does the internet work, in a few sentences?", "What are renewable energy sources?",
    "What is the smallest country in the world?", "How can I be more productive when working from home?",
    "What is a metaphor? Give an example.", "What is the difference between a noun and a verb?",
    "Describe the water cycle.", "What is the function of the lungs?", "How long does it take light from the Sun to reach us?",
    "Suggest a name for a coffee shop by the sea.", "What are the benefits of reading every day?",
    "What is an operating system?", "How does a compass work?", "What is the main idea of Darwin's theory of evolution?",
    "Give me a simple recipe for pancakes.", "What are the primary colours?", "Why do stars twinkle?",
)

PYTHON_TASKS = (
    "checks whether a string is a palindrome", "returns the n-th Fibonacci number",
    "counts the words in a text file", "merges two sorted lists into one sorted list",
    "removes duplicates from a list while keeping the order", "computes the factorial of a number",
    "finds the largest element in a list without using max", "converts Celsius to Fahrenheit",
    "checks whether two strings are anagrams", "flattens a nested list", "returns the GCD of two integers",
    "reads a CSV file and returns its rows as dictionaries", "reverses the words in a sentence",
    "computes the average of a list of numbers", "checks whether a year is a leap year",
    "sorts a list of dictionaries by a given key", "counts how often each character occurs in a string",
    "returns the prime factors of an integer", "validates an email address with a regular expression",
    "implements binary search on a sorted list", "transposes a matrix given as a list of lists",
    "converts a Roman numeral to an integer", "chunks a list into pieces of size n",
    "returns the longest common prefix of a list of strings", "implements bubble sort",
    "capitalizes the first letter of every word in a string", "computes the sum of the digits of a number",
    "returns the second largest number in a list", "checks whether a number is prime",
    "converts a list of tuples into a dictionary", "counts the vowels in a string",
    "finds the intersection of two lists", "rotates a list by k positions", "computes the median of a list",
    "returns all permutations of a string", "checks whether brackets in a string are balanced",
    "converts an integer to its binary representation", "finds the most common word in a text",
    "generates a random password of a given length", "computes the power set of a list",
    "groups a list of words by their first letter", "returns the n largest items of a list",
)

HOWTO_TASKS = (
    "read a JSON file", "sort a dictionary by its values", "measure how long a function takes",
    "remove whitespace from the ends of a string", "create a virtual environment", "make an HTTP request",
    "iterate over two lists at the same time", "write a list of lines to a file", "get the current date",
    "handle an exception and print its message", "copy a file", "parse command line arguments",
    "check whether a key is in a dictionary", "split a string on commas", "generate a random integer",
    "use a list comprehension with a condition", "define a class with a constructor", "run a shell command",
    "join a list of strings with a separator", "find the index of an item in a list",
    "list the files in a directory", "convert a string to an integer safely", "merge two dictionaries",
    "format a float with two decimal places", "read a file line by line", "count items with a Counter",
    "sleep for one second", "check the type of a variable", "use f-strings", "create a set from a list",
    "write a unit test with unittest", "use enumerate in a for loop", "make a deep copy of a list",
)

CONCEPTS = (
    "a Python decorator", "recursion", "a linked list", "a REST API", "a closure", "a generator in Python",
    "big-O notation", "a binary search tree", "garbage collection", "a race condition", "a context manager",
    "a lambda function", "version control", "a unit test", "a stack and a queue", "dynamic programming",
    "an API key", "a compiler", "an interpreter", "a database index", "encryption", "a mutex",
    "a pure function", "inheritance in object-oriented programming", "a dictionary in Python", "a tuple",
    "a virtual machine", "a cache", "an iterator", "polymorphism", "a deadlock",
)

EDIT_REQUESTS = (
    "Add type hints and a docstring to this function. Return the whole function.",
    "Add a comment explaining each step of this function. Return the whole function.",
    "Rename the variables of this function to clearer names, keeping its behaviour. Return the whole function.",
    "Rewrite this function so that it validates its arguments and raises ValueError on bad input. "
    "Return the whole function.",
    "Add a numpy-style docstring to this function. Return the whole function.",
    "Refactor this function to make it easier to read, keeping its behaviour. Return the whole function.",
)


EXPLAIN_REQUESTS = (
    "Explain what this function does.",
    "What does this function return, and when can it raise an exception?",
    "Describe step by step how this function works.",
    "Summarise this function in two sentences, then list its parameters.",
    "Is there anything in this function that could be improved? Explain briefly.",
)


def written_questions() -> list[str]:
    """The questions written for training: general, "write a function", "how do I" and "explain".

    Returns
    -------
    list[str]
    """
    return [*GENERAL_QUESTIONS,
            *(f"Write a Python function that {t}." for t in PYTHON_TASKS),
            *(f"How do I {t} in Python?" for t in HOWTO_TASKS),
            *(f"Explain in two sentences what {c} is." for c in CONCEPTS)]


def training_functions(files: list[corpus_mod.SourceFile], n: int, seed: int, max_lines: int = 24,
                       ) -> list[tuple[str, str]]:
    """``n`` functions of 4 to ``max_lines`` lines from the corpus's training split (not its tests).

    Parameters
    ----------
    files : list[SourceFile]
        The corpus (:func:`~graphrt.frontends.training.corpus.load_corpus`).
    n : int
        How many.
    seed : int
        Which ones (a seeded shuffle of all candidates, in corpus order).

    Returns
    -------
    list[tuple[str, str]]
        ``(relative path, dedented source)``.
    """
    found: list[tuple[str, str]] = []
    for f in files:
        if f.split != "train" or corpus_mod.is_test_file(f.path):
            continue
        try:
            tree = ast.parse(f.text)
        except SyntaxError:
            continue
        lines = f.text.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.decorator_list:
                body = lines[node.lineno - 1:node.end_lineno]
                if 4 <= len(body) <= max_lines:
                    indent = min(len(s) - len(s.lstrip()) for s in body if s.strip())
                    found.append((f.path, "\n".join(s[indent:] for s in body)))
    random.Random(seed).shuffle(found)
    return found[:n]


def training_conversations(files: list[corpus_mod.SourceFile], n_edits: int, seed: int,
                           n_explains: int = 0) -> list[list[dict]]:
    """The written questions, then ``n_edits`` code-edit requests and ``n_explains`` requests to explain code
    (answered in prose), each on its own training function.

    Returns
    -------
    list[list[dict]]
        One single-message conversation each.
    """
    convs = [[{"role": "user", "content": q}] for q in written_questions()]
    functions = training_functions(files, n_edits + n_explains, seed)
    for i, (_, src) in enumerate(functions):
        asks = EDIT_REQUESTS if i < n_edits else EXPLAIN_REQUESTS
        convs.append([{"role": "user", "content": f"{asks[i % len(asks)]}\n\n```python\n{src}\n```"}])
    return convs


def chat_answer_stream(model_dir: str, out_dir: str | Path, n_edits: int, max_new_tokens: int, batch: int,
                       seed: int, progress: bool = True, n_explains: int = 0,
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The conversations answered greedily by the base model, as one token stream (cached).

    Parameters
    ----------
    model_dir : str
        The base checkpoint (AR decoding of it is what verification accepts).
    out_dir : str or Path
        Run directory: the stream goes to ``out_dir/data/chat.npy`` with its offsets and a
        key (conversations, model, ``max_new_tokens``) that decides whether the cache holds.
    n_edits, seed, n_explains : int
        Code-edit and explain requests (see :func:`training_conversations`).
    max_new_tokens : int
        Longest answer.
    batch : int
        Requests decoded together.
    progress : bool
        Show a progress bar.

    Returns
    -------
    (stream, starts, record)
        ``uint16`` tokens (each conversation: its templated prompt, its answer, EOS), the
        offset of every conversation, and a record (counts, tokens, sha256 of the prompts).
    """
    import graphrt
    from graphrt.api import prepare

    files = corpus_mod.load_corpus()
    convs = training_conversations(files, n_edits, seed, n_explains)
    prompts_sha = hashlib.sha256(json.dumps(convs).encode()).hexdigest()
    key = f"{prompts_sha}-{Path(model_dir).resolve()}-{max_new_tokens}"
    data = Path(out_dir) / "data"
    meta_path = data / "chat_meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        meta = json.loads(meta_path.read_text())
        return np.load(data / "chat.npy"), np.load(data / "chat_starts.npy"), meta["record"]
    from tqdm import tqdm

    model = graphrt.load(model_dir)
    eos = model.eos_token_ids
    pieces: list[np.ndarray] = []
    with tqdm(total=len(convs), desc="chat answers", disable=not progress) as bar:
        for lo in range(0, len(convs), batch):
            session = graphrt.Session(model.backbone, model.tokenizer)
            ids = {}
            for conv in convs[lo:lo + batch]:
                compiled, prompt, params = prepare(model, messages=conv, mode="ar",
                                                   max_new_tokens=max_new_tokens)
                ids[session.add(compiled, prompt, params)] = prompt
            for rid, res in sorted(session.run().items()):
                answer = list(res.tokens)
                if not answer or answer[-1] not in eos:
                    answer.append(eos[0])
                pieces.append(np.asarray(list(ids[rid]) + answer, dtype=np.uint16))
            bar.update(len(ids))
    starts = np.cumsum([0] + [p.size for p in pieces[:-1]]).astype(np.int64)
    stream = np.concatenate(pieces)
    record = {"conversations": len(convs), "written_questions": len(written_questions()), "code_edits":
              len(convs) - len(written_questions()) - n_explains, "code_explains": n_explains,
              "tokens": int(stream.size), "max_new_tokens": max_new_tokens,
              "prompts_sha256": prompts_sha, "split": "code edits and explains use training-split functions only"}
    data.mkdir(parents=True, exist_ok=True)
    np.save(data / "chat.npy", stream)
    np.save(data / "chat_starts.npy", starts)
    meta_path.write_text(json.dumps({"key": key, "record": record}) + "\n")
    return stream, starts, record


def conversation_windows(stream: np.ndarray, starts: np.ndarray, n: int, length: int,
                         gen: torch.Generator) -> torch.Tensor:
    """``n`` rows of ``length`` tokens, each beginning inside a random conversation.

    A conversation that fits starts its row; a longer one starts at a random offset
    inside it that keeps the row within it.

    Returns
    -------
    torch.Tensor
        ``[n, length]`` int64.

    Raises
    ------
    ValueError
        If the stream is shorter than ``length + 1``.
    """
    if stream.size <= length:
        raise ValueError(f"conversation_windows: expected a stream longer than {length} tokens, found {stream.size}")
    ends = np.append(starts[1:], stream.size)
    pick = torch.randint(0, starts.size, (n,), generator=gen).numpy()
    rows = []
    for i in pick:
        slack = max(0, int(ends[i] - starts[i]) - length)
        s = int(starts[i]) + int(torch.randint(0, slack + 1, (1,), generator=gen))
        s = min(s, stream.size - length)
        rows.append(stream[s:s + length])
    return torch.from_numpy(np.stack(rows).astype(np.int64))
