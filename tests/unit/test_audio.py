import numpy as np
import pytest
import soundfile as sf
import torchaudio.functional

import lib.data.audio as audio_module
from lib.core.errors import AudioError
from lib.data.audio import load_clip


def tone(freq_hz: float, sample_rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def peak_hz(waveform: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform))
    return float(np.fft.rfftfreq(len(waveform), 1 / sample_rate)[spectrum.argmax()])


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_every_sample_format_decodes_to_the_same_waveform(tmp_path, subtype):
    reference = tone(440, 16000, 1.0)
    path = tmp_path / f"{subtype}.wav"
    sf.write(str(path), reference, 16000, subtype=subtype)
    waveform = load_clip(path, 16000, 1.0)
    assert waveform.dtype == np.float32 and waveform.shape == (16000,)
    tolerance = 1e-2 if subtype == "PCM_U8" else 1e-4
    assert np.max(np.abs(waveform - reference)) < tolerance


@pytest.mark.parametrize("source_hz", [8000, 22050, 44100, 48000])
def test_resampling_keeps_pitch_and_length(tmp_path, source_hz):
    path = tmp_path / "clip.wav"
    sf.write(str(path), tone(1000, source_hz, 1.0), source_hz, subtype="PCM_16")
    waveform = load_clip(path, 16000, 1.0)
    assert waveform.shape == (16000,)
    assert abs(peak_hz(waveform, 16000) - 1000) <= 2


def test_stereo_and_multichannel_are_averaged(tmp_path):
    left, right = tone(440, 16000, 1.0), np.zeros(16000, np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right, right, left], axis=1), 16000, subtype="FLOAT")
    assert np.allclose(load_clip(path, 16000, 1.0), left / 2, atol=1e-6)


def test_short_clips_are_padded_and_long_clips_trimmed(tmp_path):
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    sf.write(str(short), np.full(4000, 0.25, np.float32), 16000, subtype="FLOAT")
    sf.write(str(long), np.full(40000, 0.25, np.float32), 16000, subtype="FLOAT")
    padded = load_clip(short, 16000, 1.0)
    assert padded.shape == (16000,) and np.all(padded[:4000] == 0.25) and np.all(padded[4000:] == 0)
    assert load_clip(long, 16000, 1.0).shape == (16000,)
    assert load_clip(long, 16000, 2.0).shape == (32000,)


def test_non_finite_and_undecodable_files_name_the_file(tmp_path):
    nan = tmp_path / "nan.wav"
    data = np.zeros(1600, np.float32)
    data[10] = np.nan
    sf.write(str(nan), data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: contains NaN"):
        load_clip(nan, 16000, 1.0)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(AudioError, match="junk.wav: cannot decode"):
        load_clip(junk, 16000, 1.0)


def test_a_sample_rate_below_1_khz_is_refused(tmp_path):
    path = tmp_path / "slow.wav"
    sf.write(str(path), np.zeros(16000, np.float32), 1, subtype="PCM_16")  # 32 KB that claims 4.4 hours
    with pytest.raises(AudioError, match="slow.wav: sample rate 1 Hz is below 1000 Hz"):
        load_clip(path, 16000, 1.0)


def test_only_the_clip_length_is_decoded_and_resampled(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    source = tone(1000, 48000, 10.0) + tone(3000, 48000, 10.0) * 0.5
    sf.write(str(path), source, 48000, subtype="FLOAT")
    expected = audio_module.resample(source, 48000, 16000)[:16000]
    lengths = []
    real_resample = torchaudio.functional.resample

    def recording_resample(waveform, *args, **kwargs):
        lengths.append(waveform.shape[-1])
        return real_resample(waveform, *args, **kwargs)

    monkeypatch.setattr(torchaudio.functional, "resample", recording_resample)
    waveform = load_clip(path, 16000, 1.0)
    assert len(lengths) == 1 and 48000 <= lengths[0] < 48000 * 1.1
    assert waveform.shape == (16000,)
    np.testing.assert_allclose(waveform, expected, atol=1e-5)


def test_loud_float_clips_and_cancelling_stereo_are_noted_by_name(tmp_path):
    notes: dict[str, str] = {}
    loud, cancelling, fine = tmp_path / "loud.wav", tmp_path / "cancelling.wav", tmp_path / "fine.wav"
    sf.write(str(loud), tone(440, 16000, 1.0) * 10, 16000, subtype="FLOAT")  # peak 5.0
    left = tone(440, 16000, 1.0)
    sf.write(str(cancelling), np.stack([left, -left], axis=1), 16000, subtype="FLOAT")
    sf.write(str(fine), np.stack([left, left * 0.5], axis=1), 16000, subtype="PCM_16")
    for path in (loud, cancelling, fine):
        load_clip(path, 16000, 1.0, notes=notes)
    assert set(notes) == {str(loud), str(cancelling)}
    assert notes[str(loud)] == "float samples reach 5.00, far outside [-1, 1]; the clip was probably written unscaled"
    assert notes[str(cancelling)] == (
        "the 2 channels cancel out when averaged to mono (one is polarity-inverted?); the clip trains as silence"
    )


def test_a_truncated_wav_is_refused_where_no_scan_came_first(tmp_path):
    # predict reads its inputs with load_clip directly: a cut copy must not be padded and predicted on
    path = tmp_path / "cut.wav"
    sf.write(str(path), np.full(16000, 0.1, np.float32), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:16022])
    with pytest.raises(AudioError) as error:
        load_clip(path, 16000, 1.0)
    assert error.value.reason.startswith(
        "truncated: the header promises 32000 bytes of samples but the file holds 15978"
    )
