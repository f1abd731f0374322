"""Signal processing: DFT (17: ``axis`` attribute; 20: ``axis`` input), STFT, Hann/Hamming/Blackman
windows and MelWeightMatrix.

Complex values travel as a trailing dimension of 2 (real, imaginary); real signals have a trailing 1.
Transforms use ``xp.fft`` (pocketfft on NumPy, the device FFT on a device array
module) and cast back to the input's dtype.
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk import np_dtype
from engineroom.providers.cpu.registry import array_kernel, kernel


def _scalar(v) -> int:
    return int(np.asarray(v).reshape(-1)[0])


def _to_complex(x, xp):
    """(..., 1) real or (..., 2) complex -> complex array without the trailing dim."""
    if x.shape[-1] == 1:
        return x[..., 0]
    return x[..., 0] + 1j * x[..., 1]


def _from_complex(c, dtype, xp):
    return xp.stack([c.real, c.imag], axis=-1).astype(dtype, copy=False)


def _calc_dtype(dtype):
    # float16/bfloat16 transforms run in float32; NumPy's FFT keeps float32 in single precision.
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _dft(x, axis: int, length, inverse: bool, onesided: bool, xp):
    dtype = x.dtype
    rank = x.ndim
    ax = axis + rank if axis < 0 else axis
    xc = x.astype(_calc_dtype(dtype), copy=False)
    n = None if length is None else _scalar(length)
    if onesided and inverse:
        # IRFFT: one-sided complex spectrum in, full real signal out.
        spec = _to_complex(xc, xp)
        if n is None:
            n = 2 * (spec.shape[ax] - 1)
        out = xp.fft.irfft(spec, n=n, axis=ax)
        return out[..., None].astype(dtype, copy=False)
    if onesided:
        if xc.shape[-1] == 1:
            out = xp.fft.rfft(xc[..., 0], n=n, axis=ax)
        else:
            full = xp.fft.fft(_to_complex(xc, xp), n=n, axis=ax)
            m = (full.shape[ax]) // 2 + 1
            out = xp.take(full, xp.arange(m), axis=ax)
        return _from_complex(out, dtype, xp)
    c = _to_complex(xc, xp)
    out = (xp.fft.ifft if inverse else xp.fft.fft)(c, n=n, axis=ax)
    return _from_complex(out, dtype, xp)


@array_kernel("DFT", since=17, host_inputs=(1,))
def dft_17(input, dft_length=None, *, xp, axis=1, inverse=0, onesided=0):
    return _dft(input, int(axis), dft_length, bool(inverse), bool(onesided), xp)


@array_kernel("DFT", since=20, host_inputs=(1, 2))
def dft_20(input, dft_length=None, axis=None, *, xp, inverse=0, onesided=0):
    ax = -2 if axis is None else _scalar(axis)
    return _dft(input, ax, dft_length, bool(inverse), bool(onesided), xp)


@array_kernel("STFT", since=17, host_inputs=(1, 3))
def stft(signal, frame_step, window=None, frame_length=None, *, xp, onesided=1):
    dtype = signal.dtype
    step = _scalar(frame_step)
    length = signal.shape[1]
    if frame_length is not None:
        fl = _scalar(frame_length)
    elif window is not None:
        fl = window.shape[0]
    else:
        fl = length
    frames = (length - fl) // step + 1
    calc = _calc_dtype(dtype)
    # Gather every frame at once: (batch, frames, frame_length, 1|2).
    idx = xp.arange(frames)[:, None] * step + xp.arange(fl)[None, :]
    fr = signal.astype(calc, copy=False)[:, idx]
    if window is not None:
        fr = fr * window.astype(calc, copy=False)[None, None, :, None]
    if onesided and fr.shape[-1] == 1:
        out = xp.fft.rfft(fr[..., 0], axis=2)
    else:
        out = xp.fft.fft(_to_complex(fr, xp), axis=2)
        if onesided:
            out = out[:, :, :fl // 2 + 1]
    return _from_complex(out, dtype, xp)


def _cosine_window(size, periodic: int, coeffs: tuple[float, ...], output_datatype: int, xp):
    """sum_k (-1)^k a_k cos(2 pi k n / N), with N = size (periodic) or size - 1 (symmetric)."""
    n_total = _scalar(size)
    denom = n_total if periodic else n_total - 1
    n = np.arange(n_total, dtype=np.float64)
    w = np.zeros(n_total, dtype=np.float64)
    for k, a in enumerate(coeffs):
        if k == 0:
            w += a
        else:   # a symmetric window of size 1 divides 0 by 0: NaN, as onnxruntime computes it
            with np.errstate(invalid="ignore", divide="ignore"):
                w += (-1) ** k * a * np.cos(2 * np.pi * k * n / np.float64(denom))
    return xp.asarray(w.astype(np_dtype(int(output_datatype))))


@kernel("HannWindow", since=17, host_inputs=(0,))
def hann_window(size, *, xp, periodic=1, output_datatype=1):
    return _cosine_window(size, periodic, (0.5, 0.5), output_datatype, xp)


@kernel("HammingWindow", since=17, host_inputs=(0,))
def hamming_window(size, *, xp, periodic=1, output_datatype=1):
    return _cosine_window(size, periodic, (25 / 46, 1 - 25 / 46), output_datatype, xp)


@kernel("BlackmanWindow", since=17, host_inputs=(0,))
def blackman_window(size, *, xp, periodic=1, output_datatype=1):
    return _cosine_window(size, periodic, (0.42, 0.5, 0.08), output_datatype, xp)


@kernel("MelWeightMatrix", since=17, host_inputs=(0, 1, 2, 3, 4))
def mel_weight_matrix(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, *, xp,
                      output_datatype=1):
    n_mel = _scalar(num_mel_bins)
    n_dft = _scalar(dft_length)
    rate = _scalar(sample_rate)
    lo = np.asarray(lower_edge_hertz).reshape(())[()]
    hi = np.asarray(upper_edge_hertz).reshape(())[()]
    if n_dft < 1 or n_mel < 1:
        raise ValueError(f"MelWeightMatrix: dft_length ({n_dft}) and num_mel_bins ({n_mel}) must be >= 1")
    n_bins = n_dft // 2 + 1
    # n_mel + 2 points on the mel scale, mapped back to hertz, then to DFT bin indices. The step is
    # (hi - lo) / (n_mel + 2), as onnxruntime and the ONNX tests define it (the last point stays below hi).
    mel_lo = 2595 * np.log10(1 + lo / 700)
    mel_hi = 2595 * np.log10(1 + hi / 700)
    mels = np.arange(n_mel + 2) * ((mel_hi - mel_lo) / (n_mel + 2)) + mel_lo
    hz = 700 * (np.power(10, mels / 2595) - 1)
    bins = np.floor_divide((n_dft + 1) * hz, rate).astype(np.int64)
    left, center, right = bins[:-2][None, :], bins[1:-1][None, :], bins[2:][None, :]
    j = np.arange(n_bins)[:, None]
    # Triangles peaking at 1 on `center`: rising over [left, center], falling over [center, right).
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = np.where(center > left, (j - left) / np.maximum(center - left, 1), 1.0)
        fall = (right - j) / np.maximum(right - center, 1)
    w = np.zeros((n_bins, n_mel), dtype=np.float64)
    w = np.where((j >= left) & (j <= center), rise, w)
    w = np.where((j >= center) & (j < right), fall, w)
    return xp.asarray(w.astype(np_dtype(int(output_datatype))))
