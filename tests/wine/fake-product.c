/* A stand-in for a Windows design product in the end-to-end tests under Wine:
 * a GUI program with one top-level window that runs for N seconds (argument 1,
 * default 60) and closes when the window gets WM_CLOSE, as a real product
 * would ask to save and quit. With "stubborn" as argument 2 it ignores
 * WM_CLOSE, so only TerminateProcess ends it. Its version resource
 * (fake-product.rc) names it "flexfake.exe", so a renamed copy can be
 * recognised by OriginalFilename. */
#include <windows.h>
#include <stdlib.h>
#include <string.h>

static BOOL stubborn;

static LRESULT CALLBACK wndproc(HWND w, UINT msg, WPARAM wp, LPARAM lp)
{
    switch (msg) {
    case WM_CLOSE:
        if (!stubborn)
            DestroyWindow(w);
        return 0;
    case WM_TIMER:
        DestroyWindow(w);
        return 0;
    case WM_DESTROY:
        PostQuitMessage(0);
        return 0;
    }
    return DefWindowProcA(w, msg, wp, lp);
}

int WINAPI WinMain(HINSTANCE inst, HINSTANCE prev, LPSTR cmdline, int show)
{
    int seconds = 60;
    (void)prev;
    (void)cmdline;
    if (__argc > 1)
        seconds = atoi(__argv[1]);
    stubborn = __argc > 2 && strcmp(__argv[2], "stubborn") == 0;

    WNDCLASSA wc = {0};
    wc.lpfnWndProc = wndproc;
    wc.hInstance = inst;
    wc.lpszClassName = "FlexFakeProduct";
    RegisterClassA(&wc);
    HWND w = CreateWindowA("FlexFakeProduct", "Flex fake product", WS_OVERLAPPEDWINDOW,
                           CW_USEDEFAULT, CW_USEDEFAULT, 320, 200, NULL, NULL, inst, NULL);
    if (!w)
        return 3;
    ShowWindow(w, show);
    SetTimer(w, 1, (UINT)seconds * 1000, NULL);
    MSG m;
    while (GetMessageA(&m, NULL, 0, 0) > 0) {
        TranslateMessage(&m);
        DispatchMessageA(&m);
    }
    return 0;
}
