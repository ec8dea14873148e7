/* Test setup only: Wine 8's bcryptprimitives.dll lacks ProcessPrng, which Rust's
 * std calls (since 1.78) for random numbers. Built with mingw and placed beside a
 * test .exe, this DLL provides it through RtlGenRandom (advapi32's
 * SystemFunction036). Real Windows has ProcessPrng and never loads this. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
