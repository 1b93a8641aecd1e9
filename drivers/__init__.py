"""Transports and vendor drivers implementing the roles of :mod:`instruments`.

Transports (:mod:`drivers.transport`): VisaTransport (pyvisa, pyvisa-py by default),
SerialTransport (pyserial), ScriptedTransport (byte-exact conversations for tests);
:mod:`drivers.socket_transport`: SocketTransport, raw-socket resources (``::SOCKET``) spoken
directly, the same bytes as VisaTransport (SCPI drivers use it unless a ``visa_library`` is named).

Drivers, as a station file names them:
    signal_generator   drivers.keysight:MXG         Keysight/Agilent MXG N5181/N5183
                       drivers.windfreak:SynthHD    Windfreak SynthHD v2 (serial, not SCPI)
    current_source     drivers.kepco:BOP            Kepco BOP with BIT 4886 (model range from *IDN?)
                       drivers.keithley:Keithley2400  Keithley 2400 SourceMeter
    spectrum_analyzer  drivers.keysight:XSeries     Keysight X-Series swept SA (N9000A ... N9030A)
                       drivers.rohde:FSV            R&S FSV / FSV3000 / FSW
"""
