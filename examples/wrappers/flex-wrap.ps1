<#
.SYNOPSIS
A product wrapper for the Flex licensing agent on Windows, over its named pipe.

.DESCRIPTION
Asks flex-agent (\\.\pipe\flex-agent) for a license, starts the product only
when granted, tells the agent its process id, stays connected while it runs,
reports its exit, and closes it when the agent says so: first by asking its
windows to close, then by ending it after the agent's close grace.

Exit code: the product's, or 77 when the license was refused and the product
never started. The protocol is described in docs/local-api.md.

Untested: this machine's CI has no PowerShell (Debian ships none, and
PowerShell under Wine does not run here); reviewed by hand against the
protocol. Windows PowerShell 5.1 or PowerShell 7.

.EXAMPLE
powershell -ExecutionPolicy Bypass -File flex-wrap.ps1 -Product autocad -Version 2026 -- "C:\Program Files\Autodesk\AutoCAD 2026\acad.exe" drawing.dwg
#>
param(
    [Parameter(Mandatory = $true)][string]$Product,
    [string]$Version,
    [string]$Pipe = 'flex-agent',
    [Parameter(Mandatory = $true, ValueFromRemainingArguments = $true)][string[]]$Command
)

$ErrorActionPreference = 'Stop'
$Refused = 77
if ($Command.Count -gt 0 -and $Command[0] -eq '--') { $Command = $Command[1..($Command.Count - 1)] }

# One connection: request lines out, reply and event lines in (UTF-8, one JSON
# object per line, at most 64 KiB).
$utf8 = New-Object System.Text.UTF8Encoding($false)
try {
    $conn = New-Object System.IO.Pipes.NamedPipeClientStream('.', $Pipe, [System.IO.Pipes.PipeDirection]::InOut)
    $conn.Connect(5000)
} catch {
    [Console]::Error.WriteLine("flex-wrap: $Product not started: cannot reach flex-agent at \\.\pipe\$Pipe ($($_.Exception.Message)); is the service running? try: sc query flex-agent")
    exit $Refused
}
$reader = New-Object System.IO.StreamReader($conn, $utf8)
$writer = New-Object System.IO.StreamWriter($conn, $utf8)
$writer.NewLine = "`n"
$writer.AutoFlush = $true

function Send($request) {
    $writer.WriteLine(($request | ConvertTo-Json -Compress -Depth 4))
}

# A pending read of the next line, so that the product's exit and the agent's
# lines can be waited for together.
$script:pendingRead = $null
function Next-LineTask {
    if ($null -eq $script:pendingRead) { $script:pendingRead = $reader.ReadLineAsync() }
    $script:pendingRead
}
function Take-Line {
    $line = $script:pendingRead.Result
    $script:pendingRead = $null
    if ($null -eq $line) { return $null }
    $line | ConvertFrom-Json
}

# The next reply; events that come first are returned in $script:events.
$script:events = @()
function Next-Reply {
    while ($true) {
        [void](Next-LineTask).Wait()
        $msg = Take-Line
        if ($null -eq $msg) { throw 'flex-agent closed the connection' }
        if ($msg.PSObject.Properties.Name -contains 'event') { $script:events += $msg; continue }
        return $msg
    }
}

function Label($msg) {
    if ($msg.PSObject.Properties.Name -contains 'product_name' -and $msg.product_name) { $msg.product_name } else { $Product }
}

try {
    Send @{ op = 'hello'; protocol = 1; client = 'flex-wrap.ps1' }
    $hello = Next-Reply
    if (-not $hello.ok) { throw $hello.error.message }
    $launch = @{ op = 'launch'; product = $Product }
    if ($Version) { $launch.version = $Version }
    Send $launch
    $grant = Next-Reply
} catch {
    [Console]::Error.WriteLine("flex-wrap: $Product not started: $($_.Exception.Message)")
    exit $Refused
}

$name = Label $grant
if (-not $grant.ok) {
    [Console]::Error.WriteLine("flex-wrap: $name not started: $($grant.error.message) ($($grant.error.code))")
    exit $Refused
}
$session = $grant.session
$grace = 30
if ($grant.PSObject.Properties.Name -contains 'close_grace_secs' -and $grant.close_grace_secs) { $grace = [int]$grant.close_grace_secs }

# Granted: start the product and hand its process id to the agent.
$argLine = ($Command | Select-Object -Skip 1 | ForEach-Object { if ($_ -match '[\s"]') { '"' + ($_ -replace '"', '\"') + '"' } else { $_ } }) -join ' '
if ($argLine) {
    $proc = Start-Process -FilePath $Command[0] -ArgumentList $argLine -PassThru -NoNewWindow
} else {
    $proc = Start-Process -FilePath $Command[0] -PassThru -NoNewWindow
}
# Reading the handle now keeps the exit code available once the product exits.
$null = $proc.Handle
Send @{ op = 'attach'; session = $session; pid = $proc.Id }
$attached = Next-Reply
if (-not $attached.ok) { [Console]::Error.WriteLine("flex-wrap: flex-agent did not take the process: $($attached.error.message)") }

# While the product runs: follow the agent's events; close the product when told.
$connected = $true
$killAt = $null
$queue = @($script:events)
while (-not $proc.HasExited) {
    foreach ($ev in $queue) {
        if ($ev.event -eq 'product_closed' -and $null -eq $killAt) {
            [Console]::Error.WriteLine("flex-wrap: flex-agent closed $(Label $ev): $($ev.message)")
            [void]$proc.CloseMainWindow()
            $killAt = (Get-Date).AddSeconds($grace)
        }
    }
    $queue = @()
    if ($null -ne $killAt -and (Get-Date) -ge $killAt -and -not $proc.HasExited) { $proc.Kill() }
    if ($connected) {
        $task = Next-LineTask
        if ($task.Wait(250)) {
            $msg = Take-Line
            if ($null -eq $msg) {
                # The agent went away (restart): the product keeps running.
                $connected = $false
            } elseif ($msg.PSObject.Properties.Name -contains 'event') {
                $queue += $msg
            }
        }
    } else {
        [void]$proc.WaitForExit(250)
    }
}
$proc.WaitForExit()
$code = $proc.ExitCode

if ($connected) {
    try {
        Send @{ op = 'exit'; session = $session; code = $code }
        [void](Next-Reply)
    } catch { }
}
$conn.Dispose()
exit $code
