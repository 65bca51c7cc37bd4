"""The frozen encoder h(x): barp_ray.encoder runs the packaged MiniLM itself; it must give what
sentence-transformers gives, and token counts must be the prompt's own tokens."""
from __future__ import annotations

import numpy as np
import pytest

from barp_ray.encoder import PACKAGED, SentenceEncoder, _LibraryEncoder, count_tokens, load_encoder, resolve_encoder_path

TEXTS = ["Write a SQL query that lists customers.", "", "   surrounding spaces   ", "ünïcödé 日本語 😀 accents: café",
         "word " * 400, "Compose a poem about rain.", "x"]


def test_the_packaged_minilm_matches_sentence_transformers():
    """Same vectors as the library on short, empty, unicode and over-long (truncated at 256) texts,
    in any batch composition: training caches, served routes and checkpoints stay interchangeable."""
    mine = load_encoder(PACKAGED)
    assert isinstance(mine, SentenceEncoder)
    reference = _LibraryEncoder(resolve_encoder_path(PACKAGED)).encode(TEXTS, 64)
    for batch_size in (1, 3, 64):
        out = mine.encode(TEXTS, batch_size)
        assert out.shape == (len(TEXTS), 384) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference, atol=2e-6)
    assert np.allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)
    # truncation is real: the over-long text's vector does not depend on what follows token 256
    longer = mine.encode(["word " * 400 + "and then something else entirely"], 1)
    np.testing.assert_allclose(longer[0], reference[4], atol=2e-6)


def test_token_counts_are_the_prompts_own_not_the_tokenizer_files_padding():
    """MiniLM's tokenizer.json pads to 128: counting with it as shipped says every prompt is 128 tokens."""
    counts = count_tokens(["hello world", "", "word " * 300])
    assert counts.tolist() == [2, 0, 300]


def test_the_prompt_limiter_counts_and_cuts_real_tokens():
    from serve.guard import GuardError, PromptLimiter
    from serve.settings import LimitSettings

    cut = PromptLimiter(LimitSettings(max_prompt_tokens=4, long_prompt="truncate"), PACKAGED)
    assert cut.apply("hello world") == "hello world"  # 2 tokens: untouched (it was cut to "" at a limit < 128)
    assert cut.apply("one two three four five six") == "one two three four"
    strict = PromptLimiter(LimitSettings(max_prompt_tokens=4, long_prompt="reject"), PACKAGED)
    try:
        strict.apply("one two three four five six")
    except GuardError as e:
        assert e.status == 413 and "6 tokens" in str(e)
    else:
        raise AssertionError("a 6-token prompt passed a 4-token limit")


def test_a_text_that_travels_whole_is_cut_for_routing_never_refused():
    """Chat's last user message goes whole to the provider; the router reads its start, cut to the
    route limits in bytes (at a character, never inside one) and in tokens, whatever long_prompt says."""
    from serve.guard import PromptLimiter
    from serve.settings import LimitSettings

    strict = PromptLimiter(LimitSettings(max_prompt_bytes=10, max_prompt_tokens=4, long_prompt="reject"), PACKAGED)
    assert strict.routing_text("héé héé héé") == "héé hé"  # byte 10 is the first half of an é: it is dropped
    assert strict.routing_text("one two three four five six") == "one two th"  # the byte cut first
    loose = PromptLimiter(LimitSettings(max_prompt_tokens=4, long_prompt="reject"), PACKAGED)
    assert loose.routing_text("one two three four five six") == "one two three four"
    assert loose.routing_text("hello world") == "hello world"
    assert loose.apply(loose.routing_text("word " * 50_000)) == "word word word word"  # what the route then takes


def test_a_long_text_is_counted_from_samples_close_to_its_exact_count():
    """Exact counting runs at ~0.5 M tokens/s: a chat body of megabytes is counted from samples."""
    from serve.guard import COUNT_EXACT_CHARS, PromptLimiter
    from serve.settings import LimitSettings

    limiter = PromptLimiter(LimitSettings(), PACKAGED)
    exact = lambda text: len(limiter.tokenizer.encode(text, add_special_tokens=False).ids)  # noqa: E731
    clauses = "".join(f"Clause {i}: the lessee keeps the premises in good repair. " for i in range(6000))
    short = clauses[: COUNT_EXACT_CHARS]
    assert limiter.count(short) == exact(short)
    for text in (clauses, clauses * 5, "\n".join(TEXTS) * 400):  # periodic texts: samples must not align with the period
        assert len(text) > COUNT_EXACT_CHARS and abs(limiter.count(text) / exact(text) - 1) < 0.02, len(text)


def test_no_prompt_has_more_wordpiece_tokens_than_utf8_bytes():
    """The limiter skips counting prompts of at most max_prompt_tokens bytes; that is only sound while
    the tokenizer never makes more tokens than the prompt has bytes, over every script it may meet."""
    import random

    from serve.guard import PromptLimiter
    from serve.settings import LimitSettings

    tokenizer = PromptLimiter(LimitSettings(), PACKAGED).tokenizer
    chars = [chr(c) for c in range(1, 0x30000, 7) if not 0xD800 <= c <= 0xDFFF]
    rng = random.Random(0)
    texts = chars + ["".join(rng.choice(chars) for _ in range(rng.randint(1, 40))) for _ in range(3000)] + TEXTS
    for text in texts:
        n_bytes = len(text.encode("utf-8", "surrogatepass"))
        assert len(tokenizer.encode(text, add_special_tokens=False).ids) <= n_bytes, repr(text)
    short = PromptLimiter(LimitSettings(max_prompt_tokens=8, long_prompt="reject"), PACKAGED)
    assert short.apply("8 bytes!") == "8 bytes!"  # at the limit in bytes: not counted, not refused


def test_text_statistics_describe_how_a_prompt_is_put_and_stay_of_order_one():
    from barp_ray.prompt_stats import NAMES, text_stats

    choice = "Which planet is largest?\n(A) Mars\n(B) Jupiter\nC) Venus\nD. Earth"
    code = "def f(x):\n    return [i * 2 for i in range(x)]"
    s = text_stats(["", choice, code, "x" * 1_000_000])
    col = NAMES.index
    assert s.shape == (4, len(NAMES)) and s.dtype == np.float32 and np.isfinite(s).all()
    assert s[0].tolist() == [-4.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # the empty prompt
    assert s[1, col("log_choice_lines")] == pytest.approx(np.log1p(4))  # "(A)", "(B)", "C)", "D."
    assert s[1, col("log_question_marks")] == pytest.approx(np.log1p(1))
    assert s[2, col("code_share")] > 1 > s[1, col("code_share")]
    assert s[2, col("digit_share")] > 0 == s[1, col("digit_share")]
    assert -4 <= s.min() and s.max() < 6  # a megabyte of text is still a few units: inputs stay of order one


def test_the_embedding_cache_gives_the_encoders_own_vectors_and_forgets_the_least_recent():
    from barp_ray.encoder import PACKAGED, encode
    from serve.embedding_cache import EmbeddingCache

    cache = EmbeddingCache(capacity=2)
    texts = ["Sum the first ten primes.", "Write a haiku about rain.", "Sum the first ten primes."]
    assert np.array_equal(cache.encode(texts, PACKAGED), encode(texts, PACKAGED))  # bit for bit, kept or fresh
    assert cache.state() == {"capacity": 2, "entries": 2, "hits": 0, "misses": 3}
    cache.encode([texts[0]], PACKAGED)  # used: the haiku is now the least recent
    cache.encode(["Name a mammal that lays eggs."], PACKAGED)
    assert cache.state()["entries"] == 2 and cache.state()["hits"] == 1
    cache.encode([texts[0]], PACKAGED)
    assert cache.state()["hits"] == 2  # kept
    cache.encode([texts[1]], PACKAGED)
    assert cache.state()["misses"] == 5  # forgotten, encoded again
    off = EmbeddingCache(capacity=0)
    assert np.array_equal(off.encode(texts, PACKAGED), encode(texts, PACKAGED)) and off.state()["entries"] == 0
