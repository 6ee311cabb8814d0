"""Gaussian diffusion shared by the unCLIP prior, decoder and upsamplers.

`schedules` holds the forward process' tables (Ho et al. 2020; Nichol & Dhariwal 2021),
`objectives` the eps / x0 / v parameterisations and losses (Salimans & Ho 2022 for v), and
`samplers` the reverse processes: DDPM, DDIM (Song et al. 2021) with inversion, DPM-Solver++(2M)
(Lu et al. 2022) and classifier-free guidance (Ho & Salimans 2022).
"""
